"""V2 tensors <-> numpy on the server: datatype and shape checks, and decoding what clients send.

Inputs are viewed straight from `raw_input_contents` with np.frombuffer (no copy); outputs are answered
as `raw_output_contents`. Every size taken from a request is checked with Python integers (which do not
overflow) against the bytes actually received before anything is allocated from it. The datatype table and
the raw encoding itself live in onnx_serve.types, which the client shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnx_serve.core.errors import InvalidArgument
from onnx_serve.types import DATATYPES, DataType, datatype_of, deserialize_bytes
from onnx_serve.types import TensorSpec as TensorSpec  # re-exported: callers of the checks here pass it


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
        check_fits(dt, shape, spec, where)
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
        try:
            return deserialize_bytes(raw, count, where).reshape(shape)
        except ValueError as exc:  # malformed contents: the client's fault
            raise InvalidArgument(str(exc)) from None
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


def check_arrays(inputs: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], max_elements: int
                 ) -> dict[str, np.ndarray]:
    """In-process inputs (numpy arrays by input name), held to the same rules as wire tensors: every input
    given once, the model's datatype and shape, at most `max_elements` each. BYTES take str or bytes."""
    by_name = {spec.name: spec for spec in specs}
    checked: dict[str, np.ndarray] = {}
    for name, given in inputs.items():
        spec = model_input(by_name, name)
        where = f"input '{name}'"
        array = np.asarray(given)
        try:
            dt = datatype_of(array)
        except KeyError:
            raise InvalidArgument(f"{where}: numpy dtype {array.dtype} is not a V2 datatype") from None
        check_fits(dt, array.shape, spec, where)
        element_count(array.shape, where, max_elements)
        if dt.name == "BYTES":
            array = _as_text(_bytes_elements(array, where).reshape(array.shape), where)
        elif array.dtype != dt.numpy:  # big-endian: ONNX Runtime would read the bytes as little-endian
            array = array.astype(dt.numpy)
        checked[name] = array
    check_none_missing(by_name, checked)
    return checked


# The rules every way of giving inputs (wire tensors, in-process arrays) is held to, with the same messages.


def model_input(specs: Mapping[str, TensorSpec], name: str) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise InvalidArgument(f"input '{name}': the model has no such input (it takes {', '.join(specs)})")
    return spec


def check_fits(dt: DataType, shape: Sequence[int], spec: TensorSpec, where: str) -> None:
    if dt.name != spec.datatype:
        raise InvalidArgument(f"{where}: datatype {dt.name} does not match the model's {spec.datatype}")
    if not spec.accepts_shape(shape):
        raise InvalidArgument(f"{where}: shape {list(shape)} does not match the model's {list(spec.shape)}")


def check_none_missing(specs: Mapping[str, TensorSpec], given: Mapping[str, np.ndarray]) -> None:
    missing = [name for name in specs if name not in given]
    if missing:
        raise InvalidArgument(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _bytes_elements(array: np.ndarray, where: str) -> np.ndarray:
    """The elements of a str, bytes or object array as bytes; anything else in an object array is refused
    rather than turned into its repr."""
    encoded = np.empty(array.size, dtype=np.object_)
    for i, item in enumerate(array.flat):
        if isinstance(item, bytes):
            encoded[i] = item
        elif isinstance(item, str):
            encoded[i] = item.encode()
        else:
            raise InvalidArgument(f"{where}: BYTES element {i} is a {type(item).__name__}, not str or bytes")
    return encoded
