"""A ResNet-18-shaped CNN with random weights, exported to ONNX for benchmarks.

    python -m training.resnet18 --out bench-models

writes ``bench-models/resnet18/1/model.onnx`` (input ``input`` float32 [N, 3, 224, 224], output
``logits`` float32 [N, 1000], dynamic batch) and ``bench-models/resnet18/config.yaml``. The weights are
random (fixed seed), so its answers mean nothing: it exists to measure serving throughput and latency
with the compute profile of a real ImageNet classifier (about 1.8 GFLOPs per image, 11.7 M parameters).
Written here in plain torch (He et al., "Deep Residual Learning for Image Recognition", 2015).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from training.export import check_parity, export_onnx, exporter_main, imagenet_config_yaml, model_metadata

OPSET = 17

CONFIG_YAML = imagenet_config_yaml(
    "Benchmark model: ResNet-18 shape, random weights (written by training/resnet18.py).",
    preprocess_note="Usual ImageNet preprocessing, so the Classify API can be benchmarked too.",
    interpolation="bilinear",
    scale=1 / 255,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_channels = 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(images))), 1))


def build_and_export(out: Path, seed: int = 0) -> Path:
    """Export to ``out/resnet18/1/model.onnx`` plus ``config.yaml``; returns the model path."""
    torch.manual_seed(seed)
    model = ResNet18().eval()
    model_dir = out / "resnet18"
    model_path = model_dir / "1" / "model.onnx"
    metadata = model_metadata(
        model,
        model_name="resnet18",
        architecture="ResNet-18 (basic blocks [2, 2, 2, 2], 1000 classes), random weights for benchmarks",
        seed=str(seed),
    )
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(2, 3, 224, 224, generator=generator)
    export_onnx(model, example, model_path, output_name="logits", opset=OPSET, metadata=metadata)
    # Logits of a random network are O(1); 1e-4 absolute leaves room for float reassociation.
    report = check_parity(model, model_path, torch.randn(5, 3, 224, 224, generator=generator).numpy(), atol=1e-4)
    print(report)
    (model_dir / "config.yaml").write_text(CONFIG_YAML)
    return model_path


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main(__doc__, build_and_export, argv, out_help="model repository to write resnet18/ into")


if __name__ == "__main__":
    sys.exit(main())
