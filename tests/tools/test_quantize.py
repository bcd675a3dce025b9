"""`onnx-serve quantize` as a user runs it, on a small onnx.helper CNN with Pillow images: a version written with
its report and model-card section, the gate refusing, every error a clear one-line exit 2, and the written INT8
version served through Classify with the top-1 of in-process INT8 ONNX Runtime on the same preprocessing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_serve.cli import main
from onnx_serve.client.client import Client
from onnx_serve.core.model_config import load_model_config
from onnx_serve.imaging import decode_and_preprocess
from PIL import Image

from tests.helpers.inprocess import in_process_server
from tests.helpers.serving import ROOT, conv_classifier_model, save_model, tensor

LABELS = ("dark", "mid", "bright")
LEVELS = {"dark": 0.12, "mid": 0.5, "bright": 0.88}  # mean grey level of each class's images
CONFIG = """\
max_batch_size: 16
labels: labels.txt
preprocess: {color_mode: L, resize: exact, width: 8, height: 8, invert: false}
"""
CARD = "# brightness\n\nA model card written by hand.\n"
FAST = ["--batch-sizes", "1,4", "--speed-duration", "0.05", "--no-progress"]


def brightness_classifier(path: Path) -> Path:
    """dark / mid / bright by mean grey level: a 3x3 box filter (2 channels, per-channel weights), ReLU, global
    average pool, then logits 12 (1/3 - m), 0, 12 (m - 2/3) on the mean m. Wide margins: INT8 keeps the top-1."""
    box = np.full((2, 1, 3, 3), 1 / 9, np.float32) * np.array([1.0, 0.5], np.float32)[:, None, None, None]
    dense = np.array([[-12.0, 0.0, 12.0], [0.0, 0.0, 0.0]], np.float32)
    initializers = [numpy_helper.from_array(box, "box"), numpy_helper.from_array(dense, "dense"),
                    numpy_helper.from_array(np.array([4.0, 0.0, -8.0], np.float32), "bias")]
    nodes = [helper.make_node("Conv", ["input", "box"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "dense", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "brightness", [tensor("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [tensor("probabilities", TensorProto.FLOAT, ["N", 3])], initializer=initializers)
    return save_model(graph, path)


def cosine_model(path: Path) -> Path:
    """No op with an INT8 form: y = cos(x)."""
    graph = helper.make_graph([helper.make_node("Cos", ["x"], ["y"])], "cos",
                              [tensor("x", TensorProto.FLOAT, ["N", 4])], [tensor("y", TensorProto.FLOAT, ["N", 4])])
    return save_model(graph, path)


def write_images(directory: Path, per_class: int, seed: int, classes: tuple[str, ...] = LABELS) -> Path:
    """12x12 grey PNGs (resized to 8x8 by the preprocess) in one folder per label."""
    rng = np.random.default_rng(seed)
    for label in classes:
        (directory / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.clip(rng.normal(LEVELS[label] * 255, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(directory / label / f"{index:03d}.png")
    return directory


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 model directory, copied by each test that writes into one."""
    model_dir = tmp_path_factory.mktemp("source") / "brightness"
    brightness_classifier(model_dir / "1" / "model.onnx")
    (model_dir / "config.yaml").write_text(CONFIG)
    (model_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (model_dir / "README.md").write_text(CARD)
    return model_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("photos"), per_class=20, seed=1)


@pytest.fixture
def model_dir(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "repository" / source.name))


def quantize(model_dir: Path, calibration: Path, *args: str | Path) -> int:
    return main(["quantize", str(model_dir), "--calibration", str(calibration), "--samples", "24", *FAST,
                 *map(str, args)])


@pytest.fixture(scope="module")
def quantized(source: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose model has its INT8 version 2, written by the command."""
    model_dir = Path(shutil.copytree(source, tmp_path_factory.mktemp("quantized") / source.name))
    assert quantize(model_dir, photos) == 0
    return model_dir


def test_writes_the_int8_version_with_its_report_and_model_card_section(quantized: Path, source: Path) -> None:
    model = onnx.load(str(quantized / "2" / "model.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert {p.key: p.value for p in model.metadata_props}["onnx_serve.quantized_from"] == "1"
    assert (quantized / "config.yaml").read_text() == CONFIG  # the new version inherits the model's config
    document = json.loads((quantized / "quantize-2.json").read_text())
    assert document["written"] and document["source_version"] == 1 and document["version"] == 2
    check = document["check"]
    assert check["samples"] == 60 - 24  # the folder's files that were not calibrated on
    assert check["top1_agreement"] >= 0.99 and check["fp32_accuracy"] == 1.0 and check["int8_accuracy"] >= 0.99
    assert 0 <= check["mean_abs_probability_difference"] < 0.05
    assert [row["batch_size"] for row in document["speed"]["batches"]] == [1, 4]
    assert all(row["fp32_images_per_s"] > 0 and row["int8_images_per_s"] > 0 for row in document["speed"]["batches"])
    assert document["coverage"]["quantized_ops"]["Conv"] == 1 and document["coverage"]["unfused_compute_nodes"] == []
    assert document["quantization"]["calibration_method"] == "minmax"
    card = (quantized / "README.md").read_text()
    assert card.startswith(CARD) and "## INT8 version 2" in card and "| top-1 agreement with FP32 |" in card


def test_prints_the_decision_and_the_figures(model_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    assert quantize(model_dir, photos, "--version", "7", "--method", "percentile") == 0
    out = capsys.readouterr().out
    assert out.startswith("brightness: INT8 of version 1: wrote version 7")
    assert "| accuracy | 100.00% |" in out and "raw ORT images/s, batch 4" in out
    assert json.loads((model_dir / "quantize-7.json").read_text())["quantization"]["calibration_method"] == "percentile"


def test_served_int8_top1_equals_in_process_int8_onnx_runtime(quantized: Path, photos: Path) -> None:
    config = load_model_config(quantized / "config.yaml")
    assert config.preprocess is not None
    session = ort.InferenceSession(str(quantized / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    files = sorted(photos.rglob("*.png"))
    tensors = np.stack([decode_and_preprocess(f.read_bytes(), config.limits, config.preprocess) for f in files])
    expected = session.run(None, {"input": tensors})[0].argmax(axis=1)
    with in_process_server(quantized.parent, execution_providers=("CPUExecutionProvider",)) as server, \
            Client(server.url) as client:
        latest = client.classify([f.read_bytes() for f in files], model="brightness", top_k=1)
        pinned = client.classify([f.read_bytes() for f in files], model="brightness", top_k=1, version="2")
        assert client.ready("brightness", "2") and not client.ready("brightness", "1")  # INT8 rolled out
    assert [answer[0].index for answer in latest] == [answer[0].index for answer in pinned] == expected.tolist()


def test_refuses_below_the_minimum_agreement_and_writes_nothing(model_dir: Path, photos: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dark_only = write_images(tmp_path / "dark-only", per_class=8, seed=2, classes=("dark",))
    report = tmp_path / "refused.json"
    before = sorted(p.name for p in model_dir.iterdir())
    assert quantize(model_dir, dark_only, "--samples", "8", "--holdout", photos, "--report", report) == 1
    out = capsys.readouterr().out
    assert "refused: top-1 agreement with FP32 is" in out and "below --min-agreement 99.00%" in out
    assert "| top-1 agreement with FP32 |" in out  # with the figures
    assert sorted(p.name for p in model_dir.iterdir()) == before
    assert (model_dir / "README.md").read_text() == CARD
    document = json.loads(report.read_text())
    assert not document["written"] and document["check"]["top1_agreement"] < 0.99


def test_an_existing_version_is_refused_before_any_work(model_dir: Path, photos: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert quantize(model_dir, photos, "--version", "1") == 2
    assert "version 1 already exists" in capsys.readouterr().err


def test_a_quantized_version_is_not_quantized_again(quantized: Path, photos: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert quantize(quantized, photos, "--from-version", "2", "--version", "9") == 2
    assert "version 2 is already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "a file", "empty", "no images", "unreadable image"])
def test_calibration_folder_errors(case: str, model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "calibration"
    expected = {"missing": "does not exist", "a file": "is not a folder", "empty": "holds no image file",
                "no images": "holds no image file (1 other file(s))", "unreadable image": "broken.png: "}[case]
    if case == "a file":
        folder.write_text("not a folder")
    elif case != "missing":
        folder.mkdir()
    if case == "no images":
        (folder / "notes.txt").write_text("no pictures here")
    if case == "unreadable image":
        write_images(folder, per_class=10, seed=3)
        (folder / "mid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert quantize(model_dir, folder) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnx-serve quantize: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (model_dir / "2").exists()


def test_a_model_with_nothing_to_quantize_names_its_ops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "cosine"
    cosine_model(model_dir / "1" / "model.onnx")
    samples = tmp_path / "tensors"
    samples.mkdir()
    np.save(samples / "batch.npy", np.random.default_rng(0).random((8, 4), dtype=np.float32))
    assert quantize(model_dir, samples, "--samples", "4") == 2
    assert "nothing to quantize" in (err := capsys.readouterr().err) and "(Cos)" in err


def test_a_model_without_preprocess_takes_npy_tensors(tmp_path: Path, photos: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "tensors-only"
    conv_classifier_model(model_dir / "1" / "model.onnx")
    assert quantize(model_dir, photos) == 2  # images, but no preprocess to turn them into tensors
    assert "save each model input as a .npy file" in capsys.readouterr().err
    samples = tmp_path / "npy"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # stacks of 5 samples and single samples, both accepted
        shape = (5, 1, 8, 8) if index % 2 else (1, 8, 8)
        np.save(samples / f"{index}.npy", rng.random(shape, dtype=np.float32))
    assert quantize(model_dir, samples, "--samples", "3", "--min-agreement", "0") == 0
    document = json.loads((model_dir / "quantize-2.json").read_text())
    assert document["inputs"].startswith(".npy tensors") and document["check"]["fp32_accuracy"] is None


def test_the_command_line_entry_point(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", "quantize", str(tmp_path / "nothing"),
                                "--calibration", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr == f"onnx-serve quantize: model directory {tmp_path / 'nothing'} does not exist\n"
