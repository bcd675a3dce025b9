"""The training pipeline: IDX reader, split, a short real training run, export checks and parity."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from training.export import ParityError, check_parity  # noqa: E402
from training.mnist_cnn import MnistCNN, WithSoftmax  # noqa: E402
from training.mnist_idx import (  # noqa: E402
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IdxFormatError,
    load_mnist,
    read_idx,
    stratified_split,
)
from training.train_mnist import TrainingSettings, train_and_bundle  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
MNIST_DIR = Path(os.environ.get("ONNX_SERVE_MNIST_DATA", REPO_ROOT.parent / "shared" / "data" / "mnist"))


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    for stem, magic, array in (
        ("train-images-idx3-ubyte", IMAGES_MAGIC, images),
        ("train-labels-idx1-ubyte", LABELS_MAGIC, labels),
    ):
        payload = idx_bytes(magic, array)
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_load_mnist_reads_gzip_and_raw(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_mnist(tmp_path, images, labels, compress)
    dataset = load_mnist(tmp_path)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">II", 0x12340801, 1) + b"\x00")
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(path)


def test_read_idx_rejects_wrong_kind_of_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(LABELS_MAGIC, np.zeros(4)))
    with pytest.raises(IdxFormatError, match="expected 0x00000803"):
        read_idx(path, IMAGES_MAGIC)


def test_read_idx_rejects_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES_MAGIC, np.zeros((2, 28, 28)))[:-1]))
    with pytest.raises(IdxFormatError, match="needs exactly"):
        read_idx(path)


def test_load_mnist_rejects_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, np.zeros((3, 28, 28)), np.zeros(2), compress=True)
    with pytest.raises(IdxFormatError, match="3 images but"):
        load_mnist(tmp_path)


def test_load_mnist_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_stratified_split_is_disjoint_fixed_and_proportional() -> None:
    labels = np.repeat(np.arange(10), [50, 60, 40, 70, 30, 50, 50, 50, 50, 50])
    train, val = stratified_split(labels, 100, seed=1)
    assert len(val) == 100 and len(train) == len(labels) - 100
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.bincount(labels[val]), [10, 12, 8, 14, 6, 10, 10, 10, 10, 10])
    np.testing.assert_array_equal(stratified_split(labels, 100, seed=1)[1], val)


def test_check_parity_fails_loudly_on_a_different_model(tmp_path: Path) -> None:
    from training.export import export_onnx

    torch.manual_seed(0)
    exported = WithSoftmax(MnistCNN()).eval()
    path = tmp_path / "model.onnx"
    export_onnx(exported, torch.zeros(1, 1, 28, 28), path)
    inputs = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)).numpy()
    assert check_parity(exported, path, inputs).max_abs_diff <= 1e-5
    torch.manual_seed(1)
    with pytest.raises(ParityError, match="max"):
        check_parity(WithSoftmax(MnistCNN()).eval(), path, inputs)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST data not found at {MNIST_DIR}")
def test_short_training_run_learns_and_exports_a_valid_bundle(tmp_path: Path) -> None:
    out = tmp_path / "mnist-cnn"
    settings = TrainingSettings(data=MNIST_DIR, out=out, epochs=3, limit=600, val_size=100, show_progress=False)
    result = train_and_bundle(settings)

    assert result.train_count == 500 and result.val_count == 100
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.val_accuracy > 0.5  # chance is 0.1; 500 digits for 3 epochs is far above it
    assert result.confusion.sum() == 100

    model = onnx.load(str(out / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["validation_accuracy"] == f"{result.val_accuracy:.4f}"
    assert result.parity is not None
    assert result.parity.samples == 100
    assert result.parity.max_abs_diff <= 1e-5 and result.parity.argmax_mismatches == 0

    assert (out / "labels.txt").read_text().split() == [str(digit) for digit in range(10)]
    assert (out / "config.yaml").is_file()
    assert f"{result.val_accuracy:.2%}" in (out / "README.md").read_text()


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST data not found at {MNIST_DIR}")
def test_training_is_deterministic(tmp_path: Path) -> None:
    def run(name: str) -> bytes:
        settings = TrainingSettings(
            data=MNIST_DIR, out=tmp_path / name, epochs=1, limit=300, val_size=50, show_progress=False
        )
        train_and_bundle(settings)
        return (tmp_path / name / "1" / "model.onnx").read_bytes()

    assert run("first") == run("second")
