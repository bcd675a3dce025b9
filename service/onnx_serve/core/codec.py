"""V2 tensors <-> numpy: the datatype table, shape checks and raw contents.

Inputs are viewed straight from `raw_input_contents` with np.frombuffer (no copy); outputs are answered
as `raw_output_contents`. Every size taken from a request is checked with Python integers (which do not
overflow) against the bytes actually received before anything is allocated from it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_serve.core.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class DataType:
    name: str  # the V2 datatype name, e.g. "FP32"
    numpy: np.dtype[Any]
    onnx: str  # the ONNX Runtime type string, e.g. "tensor(float)"
    contents_field: str | None  # InferTensorContents field carrying it, None for raw only


DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        DataType("BOOL", np.dtype(np.bool_), "tensor(bool)", "bool_contents"),
        DataType("UINT8", np.dtype("<u1"), "tensor(uint8)", "uint_contents"),
        DataType("UINT16", np.dtype("<u2"), "tensor(uint16)", "uint_contents"),
        DataType("UINT32", np.dtype("<u4"), "tensor(uint32)", "uint_contents"),
        DataType("UINT64", np.dtype("<u8"), "tensor(uint64)", "uint64_contents"),
        DataType("INT8", np.dtype("<i1"), "tensor(int8)", "int_contents"),
        DataType("INT16", np.dtype("<i2"), "tensor(int16)", "int_contents"),
        DataType("INT32", np.dtype("<i4"), "tensor(int32)", "int_contents"),
        DataType("INT64", np.dtype("<i8"), "tensor(int64)", "int64_contents"),
        DataType("FP16", np.dtype("<f2"), "tensor(float16)", None),
        DataType("FP32", np.dtype("<f4"), "tensor(float)", "fp32_contents"),
        DataType("FP64", np.dtype("<f8"), "tensor(double)", "fp64_contents"),
        DataType("BYTES", np.dtype(np.object_), "tensor(string)", "bytes_contents"),
    )
}
BY_ONNX_TYPE = {dt.onnx: dt for dt in DATATYPES.values()}
BY_NUMPY_KIND = {dt.numpy: dt for dt in DATATYPES.values() if dt.name != "BYTES"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the V2 API describes it: -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


def datatype(name: str, where: str) -> DataType:
    try:
        return DATATYPES[name]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise InvalidArgument(f"{where}: unknown datatype '{name}' (expected one of {known})") from None


MAX_RANK = 64  # numpy's limit (NPY_MAXDIMS)


def element_count(shape: Sequence[int], where: str, max_elements: int) -> int:
    """Checks a declared shape with Python integers. Each dimension is bounded on its own too: a tensor with
    a zero dimension holds no elements, but numpy still refuses to view one shaped [0, 2**62]."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{where}: shape has {len(shape)} dimensions, more than the {MAX_RANK} supported")
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{where}: shape {list(shape)} has a negative dimension")
        if dim > max_elements:
            raise InvalidArgument(f"{where}: shape {list(shape)} has a dimension above {max_elements}, the most "
                                  "elements a request may carry")
        count *= dim
        if count > max_elements:
            raise InvalidArgument(
                f"{where}: shape {list(shape)} holds more than {max_elements} elements, the most a request "
                "may carry"
            )
    return count


def decode_input(
    tensor: Any,
    raw: bytes | None,
    spec: TensorSpec | None,
    max_elements: int,
) -> np.ndarray:
    """Decodes one InferInputTensor (with its raw contents, if the request uses raw contents)."""
    where = f"input '{tensor.name}'"
    dt = datatype(tensor.datatype, where)
    shape = tuple(tensor.shape)
    if spec is not None:
        if dt.name != spec.datatype:
            raise InvalidArgument(f"{where}: datatype {dt.name} does not match the model's {spec.datatype}")
        if not spec.accepts_shape(shape):
            raise InvalidArgument(f"{where}: shape {list(shape)} does not match the model's {list(spec.shape)}")
    count = element_count(shape, where, max_elements)
    has_typed = tensor.HasField("contents")
    if raw is not None:
        if has_typed:
            raise InvalidArgument(f"{where}: both raw_input_contents and typed contents are set")
        array = _from_raw(raw, dt, shape, count, where)
    elif not has_typed:
        raise InvalidArgument(f"{where}: no data (neither raw_input_contents nor contents)")
    else:
        array = _from_contents(tensor.contents, dt, shape, count, where)
    return _as_text(array, where) if dt.name == "BYTES" else array


def _as_text(array: np.ndarray, where: str) -> np.ndarray:
    """ONNX string tensors hold UTF-8 text, and ONNX Runtime's Python API takes str: handed bytes objects it
    feeds their repr ("b'abc'") to the model. So BYTES elements are decoded here, strictly."""
    texts = np.empty(array.size, dtype=np.object_)
    for i, item in enumerate(array.flat):
        try:
            texts[i] = item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{where}: BYTES element {i} is not valid UTF-8 (ONNX string tensors hold "
                                  "UTF-8 text)") from None
    return texts.reshape(array.shape)


def _from_raw(raw: bytes, dt: DataType, shape: tuple[int, ...], count: int, where: str) -> np.ndarray:
    if dt.name == "BYTES":
        return deserialize_bytes(raw, count, where).reshape(shape)
    expected = count * dt.numpy.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{where}: raw contents hold {len(raw)} bytes, but shape {list(shape)} of {dt.name} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def _from_contents(contents: Any, dt: DataType, shape: tuple[int, ...], count: int, where: str) -> np.ndarray:
    if dt.contents_field is None:
        raise InvalidArgument(f"{where}: {dt.name} can only be sent as raw_input_contents")
    for field, _ in contents.ListFields():
        if field.name != dt.contents_field:
            raise InvalidArgument(f"{where}: {field.name} set for a {dt.name} tensor (expected {dt.contents_field})")
    values = getattr(contents, dt.contents_field)
    if len(values) != count:
        raise InvalidArgument(f"{where}: {len(values)} values in contents, but shape {list(shape)} needs {count}")
    if dt.name == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dt.numpy).reshape(shape)
    except OverflowError:
        raise InvalidArgument(f"{where}: a value does not fit in {dt.name}") from None


def deserialize_bytes(raw: bytes, count: int, where: str) -> np.ndarray:
    """V2 BYTES raw encoding: each element is a 4-byte little-endian length followed by its bytes."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw) or len(items) >= count:
            raise InvalidArgument(f"{where}: malformed BYTES raw contents (expected {count} elements)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"{where}: BYTES element {len(items)} runs past the end of the raw contents")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidArgument(f"{where}: raw contents hold {len(items)} BYTES elements, shape needs {count}")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def datatype_of(array: np.ndarray) -> DataType:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return DATATYPES["BYTES"]
    return BY_NUMPY_KIND[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


def to_raw(array: np.ndarray) -> bytes:
    dt = datatype_of(array)
    if dt.name == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=dt.numpy).tobytes()
