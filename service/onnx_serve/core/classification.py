"""Triton's classification extension (docs/protocol/extension_classification.md in triton-inference-server/
server): a requested output with the `classification` parameter (tritonclient's class_count) is answered as
BYTES "<value>:<index>[:<label>]" for its top N elements instead of the tensor.

As Triton computes it: per batch item when the model batches (max_batch_size > 0; shape [batch, N]), else over
the whole tensor (shape [N]); N is the count asked for, at most the elements there are; highest value first
(ties: lower index first), compared in the output's own datatype; the value printed as C++'s std::to_string
does (6 decimals for floats, integers as they are); the label, when the output has one for that index (its
label_filename, or the model's `labels`). The ordering is the Classify API's (imaging.postprocess).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnx_serve.core.errors import InvalidArgument
from onnx_serve.imaging.postprocess import largest_first
from onnx_serve.types import TensorSpec

PARAMETER = "classification"
NOT_CLASSIFIABLE = frozenset({"BYTES", "BOOL"})

ParameterValue = bool | int | float | str


def class_count(name: str, parameters: Mapping[str, ParameterValue], spec: TensorSpec) -> int:
    """The number of classes asked for on output `name` (0: the tensor itself, as Triton takes 0)."""
    value = parameters.get(PARAMETER)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"requested output '{name}': parameter '{PARAMETER}' must be a whole number of "
                              f"classes (>= 0), got {value!r}")
    if value and spec.datatype in NOT_CLASSIFIABLE:
        raise InvalidArgument(f"requested output '{name}': class results are not available for a "
                              f"{spec.datatype} output")
    return value


def classified(spec: TensorSpec, array: np.ndarray, count: int, batched: bool,
               labels: Sequence[str] | None) -> tuple[TensorSpec, np.ndarray]:
    """The BYTES answer that stands for `array` (one output as the model gave it)."""
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    texts = np.empty((rows.shape[0], k), dtype=np.object_)
    if k:
        order = largest_first(rows, k)
        values = np.take_along_axis(rows, order, axis=1)
        floating = rows.dtype.kind == "f"
        names: Sequence[str] = labels or ()
        for r, (indexes, row_values) in enumerate(zip(order.tolist(), values.tolist(), strict=True)):
            for c, (index, value) in enumerate(zip(indexes, row_values, strict=True)):
                text = f"{value:f}:{index}" if floating else f"{value}:{index}"
                texts[r, c] = f"{text}:{names[index]}" if index < len(names) else text
    answer = texts if batched and array.ndim else texts[0]
    return TensorSpec(spec.name, "BYTES", (-1, k) if batched else (k,)), answer
