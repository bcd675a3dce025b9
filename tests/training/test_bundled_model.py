"""The committed models/mnist-cnn bundle meets its contract (ONNX Runtime only, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import yaml

from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "mnist-cnn"
MODEL_PATH = MODEL_DIR / "1" / "model.onnx"
MNIST_DIR = Path(os.environ.get("ONNX_SERVE_MNIST_DATA", REPO_ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="module")
def session() -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])


def test_signature_is_input_n_1_28_28_to_probabilities_n_10(session: onnxruntime.InferenceSession) -> None:
    (model_input,) = session.get_inputs()
    (model_output,) = session.get_outputs()
    assert model_input.name == "input" and model_input.type == "tensor(float)"
    assert model_output.name == "probabilities" and model_output.type == "tensor(float)"
    assert isinstance(model_input.shape[0], str) and model_input.shape[1:] == [1, 28, 28]
    assert isinstance(model_output.shape[0], str) and model_output.shape[1:] == [10]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_gives_probabilities(session: onnxruntime.InferenceSession, batch: int) -> None:
    pixels = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    (probabilities,) = session.run(None, {"input": pixels})
    assert probabilities.shape == (batch, 10) and probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_opset_and_provenance_metadata() -> None:
    model = onnx.load(str(MODEL_PATH))
    onnx.checker.check_model(model)
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    for key in ("architecture", "data", "validation_accuracy", "seed", "date", "torch_version", "onnx_version"):
        assert metadata.get(key), f"metadata_props lacks {key}"
    assert float(metadata["validation_accuracy"]) >= 0.985


def test_config_yaml_follows_the_contract() -> None:
    config = yaml.safe_load((MODEL_DIR / "config.yaml").read_text())
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 0,
        "max_queue_size": 1024,
    }
    assert config["instance_group"] == {"count": 1}
    assert config["labels"] == "labels.txt"
    assert config["preprocess"] == {
        "color_mode": "L",
        "background": 255,
        "resize": "exact",
        "width": 28,
        "height": 28,
        "interpolation": "bilinear",
        "invert": "auto",
        "center": "mass",
        "scale": pytest.approx(1 / 255),
        "mean": [0.0],
        "std": [1.0],
        "layout": "NCHW",
        "dtype": "FP32",
    }
    assert config["postprocess"] == {"softmax": False, "top_k": 5}


def test_labels_are_the_ten_digits() -> None:
    assert (MODEL_DIR / "labels.txt").read_text().splitlines() == [str(digit) for digit in range(10)]


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST data not found at {MNIST_DIR}")
def test_reported_validation_accuracy_is_what_onnx_runtime_measures(
    session: onnxruntime.InferenceSession,
) -> None:
    dataset = load_mnist(MNIST_DIR)
    _, val = stratified_split(dataset.labels, 1000, SPLIT_SEED)
    pixels = (dataset.images[val].astype(np.float32) / 255.0)[:, None]
    (probabilities,) = session.run(None, {"input": pixels})
    accuracy = float(np.mean(probabilities.argmax(axis=1) == dataset.labels[val]))
    metadata = {prop.key: prop.value for prop in onnx.load(str(MODEL_PATH)).metadata_props}
    assert f"{accuracy:.4f}" == metadata["validation_accuracy"]
    assert accuracy >= 0.985
