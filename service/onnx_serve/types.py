"""The vocabulary the server and the client share: KServe V2 datatypes and their raw encoding, tensor specs,
predictions, and example inputs shaped from specs.

numpy and the standard library only, so the client (which imports nothing of the server) and the server's
core, its edges and the bench tool can all use the same definitions.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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


@dataclass(frozen=True, slots=True)
class Prediction:
    """One of the top-k classes of an image: its label (the class index as text when it has none)."""

    label: str
    index: int
    score: float


def has_batch_axis(specs: Iterable[TensorSpec]) -> bool:
    """Every tensor has a dynamic first axis, so requests can be stacked along it."""
    specs = tuple(specs)
    return bool(specs) and all(spec.shape and spec.shape[0] < 0 for spec in specs)


# ------------------------------------------------------------------------------------------ raw contents


def datatype_of(array: np.ndarray) -> DataType:
    """The V2 datatype of a numpy array; a KeyError for a dtype V2 has no name for (complex, datetime...)."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return DATATYPES["BYTES"]
    return BY_NUMPY_KIND[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


def to_raw(array: np.ndarray) -> bytes:
    """The V2 raw contents of an array: little-endian values, or length-prefixed BYTES elements."""
    dt = datatype_of(array)
    if dt.name == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=dt.numpy).tobytes()


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, count: int, where: str) -> np.ndarray:
    """V2 BYTES raw encoding: each element is a 4-byte little-endian length followed by its bytes. Malformed
    contents are a ValueError whose message starts with ``where``."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw) or len(items) >= count:
            raise ValueError(f"{where}: malformed BYTES raw contents (expected {count} elements)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"{where}: BYTES element {len(items)} runs past the end of the raw contents")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise ValueError(f"{where}: raw contents hold {len(items)} BYTES elements, shape needs {count}")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


# -------------------------------------------------------------------------------------------- examples


def example_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator | None = None) -> np.ndarray:
    """An input of ``datatype`` and ``shape``: zeros (empty strings) without ``rng``, else random values
    (floats in [0, 1), booleans, integers in [0, 100), 8-character hex strings). Strings are str, which
    ONNX Runtime takes and :func:`to_raw` encodes as UTF-8, as the server requires of BYTES."""
    if datatype == "BYTES":
        array = np.empty(shape, dtype=np.object_)
        for index in np.ndindex(*shape):
            array[index] = "" if rng is None else rng.bytes(4).hex()
        return array
    dtype = DATATYPES[datatype].numpy
    if rng is None:
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 2 if dtype.kind == "b" else 100, shape).astype(dtype)


def example_shape(spec: TensorSpec, batch_size: int = 1) -> tuple[int, ...]:
    """A dynamic first axis becomes ``batch_size``, any other dynamic axis 1."""
    return tuple((batch_size if axis == 0 else 1) if d < 0 else d for axis, d in enumerate(spec.shape))


def example_feeds(specs: Iterable[TensorSpec], batch_size: int = 1,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One :func:`example_array` per spec, by name, shaped by :func:`example_shape`."""
    return {spec.name: example_array(spec.datatype, example_shape(spec, batch_size), rng) for spec in specs}
