"""Scores -> the top-k labelled classes of each image, and the labels file that names the classes. The
ordering (largest_first) is shared with Triton's classification extension (core/classification.py)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from onnx_serve.core.errors import ConfigError, InvalidArgument
from onnx_serve.types import Prediction


def top_k(scores: np.ndarray, k: int, softmax: bool, labels: Sequence[str] | None = None) -> list[list[Prediction]]:
    """Best ``k`` classes of each row of ``scores`` (batch, classes), highest score first.

    ``softmax`` turns logits into probabilities (float64, max-shifted so large logits cannot
    overflow). Ties keep the lower class index first; NaN scores sort last. ``k`` is clipped to the
    number of classes; a class without a label (no labels file, or a short one) is labelled with
    its index. Trailing size-1 axes (e.g. ``(N, 1000, 1, 1)``) are dropped.
    """
    array = np.asarray(scores)
    if array.ndim > 2 and all(extent == 1 for extent in array.shape[2:]):
        array = array.reshape(array.shape[:2])
    if array.ndim != 2:
        raise ValueError(f"scores must have shape (batch, classes), got {array.shape}")
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise InvalidArgument(f"top_k must be a positive integer, got {k!r}")
    values = array
    if softmax:  # float64 and max-shifted: exp never overflows, tiny probabilities keep their order
        values = array.astype(np.float64)
        values -= values.max(axis=1, keepdims=True)
        np.exp(values, out=values)
        values /= values.sum(axis=1, keepdims=True)
    order = largest_first(values, min(k, values.shape[1]))
    best = values[np.arange(len(values))[:, np.newaxis], order]
    names: Sequence[str] = () if labels is None else labels
    return [
        [Prediction(names[i] if i < len(names) else str(i), i, score) for i, score in zip(row_i, row_s, strict=True)]
        for row_i, row_s in zip(order.tolist(), best.tolist(), strict=True)
    ]


def largest_first(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest values of each row, largest first, ties by lower index.

    ``argpartition`` + sorting k candidates instead of a full stable sort (10x faster on 64 x 1000);
    rows where equal values straddle the k-th place, where argpartition's pick is arbitrary, fall
    back to the stable sort.
    """
    if values.dtype.kind != "f":
        values = values.astype(np.float64)  # negating unsigned integers (quantised outputs) would wrap
    key = np.where(np.isnan(values), -np.inf, values) if np.isnan(values).any() else values
    if 4 * k >= key.shape[1]:
        return np.argsort(-key, axis=1, kind="stable")[:, :k]
    rows = np.arange(key.shape[0])[:, np.newaxis]
    candidates = np.argpartition(-key, k - 1, axis=1)[:, :k]
    threshold = key[rows, candidates].min(axis=1, keepdims=True)
    for row in np.flatnonzero(np.count_nonzero(key >= threshold, axis=1) > k):
        candidates[row] = np.argsort(-key[row], kind="stable")[:k]
    return candidates[rows, np.lexsort((candidates, -key[rows, candidates]), axis=1)]


def load_labels(path: str | PathLike[str]) -> list[str]:
    """Labels file: one label per line, the line number (from 0) is the class index.

    Lines are stripped; trailing blank lines are dropped; an empty file, a blank line between labels
    or an unreadable file is a :class:`ConfigError` naming the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read labels: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ConfigError(f"{path}: labels file is empty")
    if "" in labels:
        raise ConfigError(f"{path}: line {labels.index('') + 1} is blank (one label per line, class order)")
    return labels
