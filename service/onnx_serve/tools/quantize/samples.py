"""The samples a quantization run calibrates on and checks against: files in a folder, split into calibration
and held-out sets, turned into model inputs exactly as the server turns them.

Images go through :func:`onnx_serve.imaging.decode_and_preprocess` with the model's own ``preprocess:`` and
``limits:`` (what the Classify API runs for an encoded image), so INT8 is calibrated on the very tensors it
will serve. A model with no ``preprocess:`` (V2 tensors only) takes ``.npy`` files: one sample, or a stack of
samples along a first axis. Files in subfolders named after the model's labels (or class indexes), as
torchvision's ImageFolder lays them out, carry that label, so accuracy can be measured too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_serve.core.errors import ServeError
from onnx_serve.imaging import ImageLimits, PreprocessConfig, decode_and_preprocess
from onnx_serve.tools.quantize.errors import QuantizeError
from onnx_serve.tools.quantize.progress import Progress
from onnx_serve.types import DATATYPES, TensorSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                            ".pbm"})
TENSOR_SUFFIX = ".npy"


@dataclass(frozen=True, slots=True)
class SampleFile:
    path: Path
    label: int | None  # class index, when the file sits in a folder named after its class


@dataclass(frozen=True, slots=True)
class Listing:
    files: tuple[SampleFile, ...]
    ignored: int  # files of another kind (a README, a licence), skipped
    labelled: bool


@dataclass(frozen=True, slots=True)
class Samples:
    """Model inputs, one row per sample (no batch axis), in file order."""

    tensors: np.ndarray
    labels: np.ndarray | None  # int64 class indexes; None when the files carry none
    names: tuple[str, ...]  # the file each sample came from (with its row, for stacked .npy files)


def list_samples(directory: Path, images: bool, labels: Sequence[str] | None, what: str) -> Listing:
    """Every image (or, for a model without preprocess, every .npy file) under `directory`, sorted. Raises
    QuantizeError for a folder that is missing, unreadable or holds no file of that kind."""
    kind = "image" if images else ".npy"
    if not directory.exists():
        raise QuantizeError(f"{what} folder {directory} does not exist")
    if not directory.is_dir():
        raise QuantizeError(f"{what} folder {directory} is not a folder")
    try:
        found = sorted(p for p in directory.rglob("*") if p.is_file() and not _hidden(p, directory))
    except OSError as exc:
        raise QuantizeError(f"{what} folder {directory} cannot be read: {exc.strerror or exc}") from None
    wanted = [p for p in found if (p.suffix.lower() in IMAGE_SUFFIXES if images else p.suffix == TENSOR_SUFFIX)]
    if not wanted:
        hint = ""
        if not images and any(p.suffix.lower() in IMAGE_SUFFIXES for p in found):
            hint = ("; it holds images, but this model has no preprocess section in its config.yaml, so it is "
                    "calibrated on tensors: save each model input as a .npy file")
        elif images and any(p.suffix == TENSOR_SUFFIX for p in found):
            hint = "; it holds .npy files, but this model has a preprocess section: it is calibrated on images"
        raise QuantizeError(f"{what} folder {directory} holds no {kind} file ({len(found)} other file(s)){hint}")
    classes = _class_indexes(directory, wanted, labels)
    files = tuple(SampleFile(p, classes[i] if classes else None) for i, p in enumerate(wanted))
    return Listing(files, len(found) - len(wanted), classes is not None)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _class_indexes(root: Path, files: Sequence[Path], labels: Sequence[str] | None) -> list[int] | None:
    """Each file's class from its top folder under `root` (a label, or a class index), when every file has one."""
    by_name = {label: index for index, label in enumerate(labels or ())}
    classes = []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            return None
        folder = parts[0]
        if folder in by_name:
            classes.append(by_name[folder])
        elif folder.isdigit() and (labels is None or int(folder) < len(labels)):
            classes.append(int(folder))
        else:
            return None
    return classes


def split(listing: Listing, calibration_count: int, holdout: Listing | None, holdout_count: int,
          seed: int) -> tuple[list[SampleFile], list[SampleFile]]:
    """(calibration, held-out): a seeded shuffle of the folder, its first `calibration_count` files to calibrate
    on, and the held-out files either from their own folder or the rest of this one; never the same file."""
    order = np.random.default_rng(seed).permutation(len(listing.files))
    shuffled = [listing.files[i] for i in order]
    calibration = shuffled[:calibration_count]
    if holdout is not None:
        used = {f.path.resolve() for f in calibration}
        candidates = [holdout.files[i] for i in np.random.default_rng(seed).permutation(len(holdout.files))]
        rest = [f for f in candidates if f.path.resolve() not in used]
        if not rest:
            raise QuantizeError("the held-out folder holds only files that are calibrated on: the check needs "
                                "samples the calibration has not seen")
    else:
        rest = shuffled[calibration_count:]
        if not rest:
            raise QuantizeError(
                f"no held-out samples: the calibration folder has {len(listing.files)} file(s) and --samples "
                f"{calibration_count} takes them all; lower --samples, or give the check its own folder with "
                "--holdout DIR")
    return calibration, rest[:holdout_count]


def split_rows(pool: Samples, calibration_count: int, holdout: Samples | None, holdout_count: int,
               seed: int) -> tuple[Samples, Samples]:
    """:func:`split` for loaded samples, row by row (a .npy file may hold a stack of them)."""
    order = np.random.default_rng(seed).permutation(len(pool.tensors))
    calibration = _take(pool, order[:calibration_count])
    if holdout is not None:
        rest = _take(holdout, np.random.default_rng(seed).permutation(len(holdout.tensors)))
    else:
        rest = _take(pool, order[calibration_count:])
        if not len(rest.tensors):
            raise QuantizeError(
                f"no held-out samples: the calibration folder holds {len(pool.tensors)} sample(s) and --samples "
                f"{calibration_count} takes them all; lower --samples, or give the check its own folder with "
                "--holdout DIR")
    return calibration, _take(rest, np.arange(min(holdout_count, len(rest.tensors))))


def _take(samples: Samples, rows: np.ndarray) -> Samples:
    return Samples(samples.tensors[rows], None if samples.labels is None else samples.labels[rows],
                   tuple(samples.names[i] for i in rows))


def load_samples(files: Sequence[SampleFile], preprocess: PreprocessConfig | None, limits: ImageLimits,
                 spec: TensorSpec, progress: bool, description: str) -> Samples:
    """The model inputs of `files`: images through the model's preprocess, as the server runs it; .npy files
    checked against the input's shape (the dims after the batch axis) and cast to its datatype."""
    sample_shape = spec.shape[1:]
    dtype = DATATYPES[spec.datatype].numpy
    rows: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    with Progress(len(files), description, progress) as bar:
        for file in files:
            arrays = _image(file.path, preprocess, limits) if preprocess else _tensors(file.path, sample_shape, dtype)
            for row, array in enumerate(arrays):
                rows.append(array)
                labels.append(file.label if file.label is not None else -1)
                names.append(str(file.path) if len(arrays) == 1 else f"{file.path}[{row}]")
            bar.update()
    labelled = bool(files) and all(f.label is not None for f in files)
    return Samples(np.stack(rows), np.asarray(labels, dtype=np.int64) if labelled else None, tuple(names))


def _image(path: Path, preprocess: PreprocessConfig, limits: ImageLimits) -> list[np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QuantizeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return [decode_and_preprocess(data, limits, preprocess)]
    except ServeError as exc:  # a bad image or one over the model's limits, as the server would answer it
        raise QuantizeError(f"{path}: {exc}") from None


def _tensors(path: Path, sample_shape: tuple[int, ...], dtype: np.dtype) -> list[np.ndarray]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise QuantizeError(f"{path}: not a readable .npy array: {exc}") from None
    wanted = "[" + ", ".join("any" if d < 0 else str(d) for d in sample_shape) + "]"
    if _fits(array.shape, sample_shape):
        stacked = array[np.newaxis]
    elif array.ndim == len(sample_shape) + 1 and _fits(array.shape[1:], sample_shape) and array.shape[0] > 0:
        stacked = array
    else:
        raise QuantizeError(f"{path}: shape {list(array.shape)} is neither one sample {wanted} nor a stack of them")
    if array.dtype.kind not in "fiub" or (array.dtype.kind == "f") != (np.dtype(dtype).kind == "f"):
        raise QuantizeError(f"{path}: {array.dtype} data for a {np.dtype(dtype)} input")
    return list(stacked.astype(dtype, copy=False))


def _fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return len(shape) == len(wanted) and all(w < 0 or w == s for w, s in zip(wanted, shape, strict=True))
