"""Reader for the MNIST IDX file format (gzip-compressed or raw).

IDX layout: a 4-byte magic number (two zero bytes, a type code, the number of dimensions), then one
big-endian uint32 per dimension, then the data, row-major. MNIST uses type 0x08 (unsigned byte):
images are ``idx3`` (count, rows, columns) and labels ``idx1`` (count).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UNSIGNED_BYTE_TYPE = 0x08
IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions
LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension
GZIP_SIGNATURE = b"\x1f\x8b"
# The train/validation split depends only on this seed, not on the training seed, so the held-out
# digits never move between runs.
SPLIT_SEED = 20240601

IMAGE_FILE_NAMES = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
LABEL_FILE_NAMES = ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")


class IdxFormatError(ValueError):
    """The file is not a well-formed IDX file of the expected kind."""


@dataclass(frozen=True)
class MnistDataset:
    images: np.ndarray  # uint8 [N, 28, 28], 0 = background (black), 255 = ink (white)
    labels: np.ndarray  # uint8 [N], values 0..9


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != GZIP_SIGNATURE:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise IdxFormatError(f"{path}: corrupt gzip stream: {error}") from error


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes; the shape comes from its header."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    zero_bytes, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero_bytes != 0 or ndim == 0:
        raise IdxFormatError(f"{path}: bad IDX magic number 0x{magic:08x}")
    if type_code != UNSIGNED_BYTE_TYPE:
        raise IdxFormatError(f"{path}: IDX type code 0x{type_code:02x} is not unsigned byte (0x08)")
    if expected_magic is not None and magic != expected_magic:
        raise IdxFormatError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_size:
        raise IdxFormatError(
            f"{path}: {len(data)} bytes, but a header with shape {shape} needs exactly {expected_size}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _find(directory: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                return candidate
    tried = ", ".join(f"{stem}[.gz]" for stem in stems)
    raise FileNotFoundError(f"{directory}: none of {tried} found")


def load_mnist(directory: str | Path) -> MnistDataset:
    """Load the images and labels from a directory holding MNIST ``train-*`` IDX files."""
    directory = Path(directory)
    images_path = _find(directory, IMAGE_FILE_NAMES)
    labels_path = _find(directory, LABEL_FILE_NAMES)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} is outside 0..9")
    return MnistDataset(images=images, labels=labels)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with val holding ``val_size`` items in the classes' proportions."""
    if not 0 < val_size < len(labels):
        raise ValueError(f"validation size {val_size} must be between 1 and {len(labels) - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts * val_size / len(labels)).astype(int)
    # Hand the rounding remainder to the classes with the largest fractional parts.
    remainders = counts * val_size / len(labels) - quotas
    for index in np.argsort(-remainders, kind="stable")[: val_size - quotas.sum()]:
        quotas[index] += 1
    val_indices = [
        rng.permutation(np.flatnonzero(labels == label))[:quota] for label, quota in zip(classes, quotas, strict=True)
    ]
    val = np.sort(np.concatenate(val_indices))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val
