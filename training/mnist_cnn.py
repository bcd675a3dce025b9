"""The bundled MNIST CNN and its training-time augmentation.

The network is the classic tutorial CNN (conv 32 -> pool -> conv 64 -> pool -> dense 128 -> dense 10)
with batch norm after each convolution and dropout before each dense layer. The exported graph takes
pixels in [0, 1] (white digit on black) and does its own normalisation and softmax, so a server only
has to scale bytes by 1/255.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

# Mean and standard deviation of MNIST training pixels in [0, 1]; the usual published constants.
MNIST_PIXEL_MEAN = 0.1307
MNIST_PIXEL_STD = 0.3081

ARCHITECTURE = (
    "Normalize((x-0.1307)/0.3081) -> Conv3x3(32, same)+BN+ReLU -> MaxPool2 -> Conv3x3(64, same)+BN+ReLU "
    "-> MaxPool2 -> Flatten(3136) -> Dropout(0.25) -> Dense(128)+ReLU -> Dropout(0.5) -> Dense(10) -> Softmax"
)

AUGMENTATION = (
    "a random affine transform per digit and batch: rotation up to 10 degrees, scale 0.9-1.1, "
    "shear up to 8 degrees, shift up to 2 pixels"
)


class MnistCNN(nn.Module):
    """Returns logits; wrap in :class:`WithSoftmax` for export."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(MNIST_PIXEL_MEAN))
        self.register_buffer("pixel_std", torch.tensor(MNIST_PIXEL_STD))
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalized = (pixels - self.pixel_mean) / self.pixel_std
        return self.classifier(self.features(normalized))


class WithSoftmax(nn.Module):
    """Turns a logits model into one that outputs class probabilities (what the ONNX contract needs)."""

    def __init__(self, logits_model: nn.Module) -> None:
        super().__init__()
        self.logits_model = logits_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits_model(pixels), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation_degrees: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_shift_pixels: float = 2.0,
    max_shear_degrees: float = 8.0,
) -> torch.Tensor:
    """Small random rotation, scale, shear and shift of each image in a [N, 1, H, W] batch.

    Handwriting varies in slant, size and position; MNIST digits are centred by centre of mass, so a
    couple of pixels of shift is what real inputs show. Zeros (black) fill the uncovered border.
    """
    count, _, height, width = images.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(count).uniform_(low, high, generator=generator)

    angle = uniform(-max_rotation_degrees, max_rotation_degrees) * (math.pi / 180)
    shear = uniform(-max_shear_degrees, max_shear_degrees) * (math.pi / 180)
    scale = uniform(*scale_range)
    # affine_grid maps output coordinates to input coordinates in [-1, 1]: invert the zoom there.
    inverse_scale = 1.0 / scale
    shift_x = uniform(-max_shift_pixels, max_shift_pixels) * (2.0 / width)
    shift_y = uniform(-max_shift_pixels, max_shift_pixels) * (2.0 / height)
    cos, sin, tan_shear = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    theta = torch.stack(
        [
            torch.stack([cos * inverse_scale, (-sin + cos * tan_shear) * inverse_scale, shift_x], dim=1),
            torch.stack([sin * inverse_scale, (cos + sin * tan_shear) * inverse_scale, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
