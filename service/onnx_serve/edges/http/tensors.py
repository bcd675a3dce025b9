"""KServe V2 REST inference bodies <-> the data plane's values: JSON tensors (`data`, flattened or nested) and
Triton's binary tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes, then each
binary input's `binary_data_size` bytes in input order; outputs likewise when `binary_data` is asked for).

The JSON is checked for shape here (types, fields), before the data plane is called; what depends on the model
(names, datatypes, shapes) is checked by the decoder the data plane calls with the pinned version's signature,
with the codec's rules and messages. Binary inputs are viewed straight from the request body (no copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_serve.core.codec import check_fits, check_none_missing, datatype, decode_input, element_count, model_input
from onnx_serve.core.dataplane import InferResult, InputDecoder, ParameterValue, RequestedOutput
from onnx_serve.core.errors import InvalidArgument
from onnx_serve.core.runtime import Signature
from onnx_serve.types import DataType, TensorSpec, to_raw

MAX_NESTING = 64  # a nested `data` array deeper than numpy's own dimension limit is malformed anyway


@dataclass(frozen=True, slots=True)
class WireInput:
    """One input of the request, its JSON checked: `data` (a JSON array) or `raw` (its binary bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any] | None
    raw: memoryview | None

    def HasField(self, field: str) -> bool:  # codec.decode_input reads tensors the protobuf way
        return False


@dataclass(frozen=True, slots=True)
class InferRequestBody:
    request_id: str
    parameters: dict[str, ParameterValue] | None
    outputs: list[RequestedOutput]
    inputs: list[WireInput]

    @property
    def binary_output_default(self) -> bool:
        """Triton's `binary_data_output`: every output binary unless its own `binary_data` says otherwise."""
        return bool(self.parameters and self.parameters.get("binary_data_output"))

    def decoder(self, max_elements: int) -> InputDecoder:
        return lambda signature: decode_inputs(self.inputs, signature, max_elements)


def load_json(data: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except RecursionError:
        raise InvalidArgument(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for a body that is not UTF-8
        raise InvalidArgument(f"{what}: malformed JSON: {exc}") from None


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequestBody:
    """The request body, with `header_length` from Inference-Header-Content-Length (None: all JSON)."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view):]
    else:
        if not 0 <= header_length <= len(body):
            raise InvalidArgument(f"Inference-Header-Content-Length: {header_length} is not within the body's "
                                  f"{len(body)} bytes")
        header, binary = view[:header_length], view[header_length:]
    document = load_json(header, "request body")
    if not isinstance(document, dict):
        raise InvalidArgument("request body: expected a JSON object (the V2 inference request)")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id: expected a string")
    parameters = _parameters(document.get("parameters"), "parameters")
    for key in ("binary_data_output",):
        if parameters is not None and key in parameters and not isinstance(parameters[key], bool):
            raise InvalidArgument(f"parameters.{key}: expected a boolean")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("inputs: expected a JSON array of input tensors")
    inputs: list[WireInput] = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        wire, size = _input(item, index, binary, offset)
        inputs.append(wire)
        offset += size
    if offset != len(binary):
        raise InvalidArgument(f"binary data: the inputs' binary_data_size add up to {offset} bytes, but the body "
                              f"carries {len(binary)} after its JSON header")
    return InferRequestBody(request_id, parameters, _outputs(document.get("outputs")), inputs)


def _input(item: object, index: int, binary: memoryview, offset: int) -> tuple[WireInput, int]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidArgument(f"{where}.name: expected a string")
    where = f"input '{name}'"
    dt = item.get("datatype")
    if not isinstance(dt, str):
        raise InvalidArgument(f"{where}: datatype: expected a string")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{where}: shape: expected a JSON array of integers")
    parameters = _parameters(item.get("parameters"), f"{where}: parameters") or {}
    size = parameters.get("binary_data_size")
    data = item.get("data")
    if size is None:
        if data is None:
            raise InvalidArgument(f"{where}: no data (neither 'data' nor the binary_data_size parameter)")
        if not isinstance(data, list):
            raise InvalidArgument(f"{where}: data: expected a JSON array")
        return WireInput(name, dt, tuple(shape), data, None), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where}: binary_data_size: expected a non-negative integer")
    if data is not None:
        raise InvalidArgument(f"{where}: both 'data' and binary_data_size are given")
    if offset + size > len(binary):
        raise InvalidArgument(f"{where}: binary_data_size {size} runs past the end of the body (the binary inputs "
                              f"before it take {offset} of its {len(binary)} binary bytes)")
    return WireInput(name, dt, tuple(shape), None, binary[offset:offset + size]), size


def _parameters(value: object, where: str) -> dict[str, ParameterValue] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    for key, item in value.items():
        if not isinstance(item, str | int | float):  # bool is an int
            raise InvalidArgument(f"{where}.{key}: expected a string, number or boolean")
    return value


def _outputs(value: object) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument("outputs: expected a JSON array of requested outputs")
    outputs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument(f"outputs[{index}]: expected an object with a string 'name'")
        parameters = _parameters(item.get("parameters"), f"outputs[{index}].parameters") or {}
        if "binary_data" in parameters and not isinstance(parameters["binary_data"], bool):
            raise InvalidArgument(f"outputs[{index}].parameters.binary_data: expected a boolean")
        outputs.append(RequestedOutput(item["name"], parameters))
    return outputs


# ------------------------------------------------------------------------------- decoding, with the model


def decode_inputs(inputs: list[WireInput], signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
    specs = signature.input_by_name
    arrays: dict[str, np.ndarray] = {}
    for wire in inputs:
        spec = model_input(specs, wire.name)
        if wire.name in arrays:
            raise InvalidArgument(f"input '{wire.name}': given twice")
        where = f"input '{wire.name}'"
        dt = datatype(wire.datatype, where)
        check_fits(dt, wire.shape, spec, where)
        count = element_count(wire.shape, where, max_elements)
        if wire.raw is not None:
            arrays[wire.name] = _from_binary(wire, dt, count, spec, max_elements, where)
        else:
            assert wire.data is not None
            arrays[wire.name] = _from_json(wire.data, dt, wire.shape, count, where)
    check_none_missing(specs, arrays)
    return arrays


def _from_binary(wire: WireInput, dt: DataType, count: int, spec: TensorSpec, max_elements: int, where: str
                 ) -> np.ndarray:
    assert wire.raw is not None
    if dt.name == "BYTES":  # length-prefixed elements, decoded to text: the codec's own rules
        return decode_input(wire, bytes(wire.raw), spec, max_elements)
    expected = count * dt.numpy.itemsize
    if len(wire.raw) != expected:
        raise InvalidArgument(f"{where}: binary_data_size is {len(wire.raw)} bytes, but shape {list(wire.shape)} of "
                              f"{dt.name} needs {expected}")
    return np.frombuffer(wire.raw, dtype=dt.numpy).reshape(wire.shape)


def _from_json(data: list[Any], dt: DataType, shape: tuple[int, ...], count: int, where: str) -> np.ndarray:
    if dt.name == "BYTES":
        flat = _flatten(data, where)
        if not all(isinstance(item, str) for item in flat):
            raise InvalidArgument(f"{where}: BYTES data must be JSON strings")
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = flat
    else:
        array = _as_datatype(data, dt, where)
    if array.size != count:
        raise InvalidArgument(f"{where}: {array.size} values in data, but shape {list(shape)} needs {count}")
    return array.reshape(shape)


# The JSON types each datatype takes: a float is not silently truncated into an integer, nor a number read as a
# boolean (bool is not an int here: type() is compared, not isinstance).
JSON_TYPES: dict[str, set[type]] = {"b": {bool}, "i": {int}, "u": {int}, "f": {int, float}}
JSON_TYPE_NAMES: dict[type, str] = {bool: "booleans", int: "integers", float: "floats", str: "strings",
                                    list: "ragged arrays", dict: "objects", type(None): "nulls"}


def _as_datatype(data: list[Any], dt: DataType, where: str) -> np.ndarray:
    """The values in `dt`, refusing what would change meaning: text or objects as numbers, a float as an integer,
    a number as a boolean, an integer out of the type's range (which numpy would otherwise wrap)."""
    try:
        values = np.array(data, dtype=np.object_)  # the Python values, kept as they are; a nesting gives its shape
    except (ValueError, RecursionError):
        raise InvalidArgument(f"{where}: data is not an array of {dt.name} values") from None
    accepted = JSON_TYPES[dt.numpy.kind]
    found = set(map(type, values.ravel()))
    if not found <= accepted:
        names = ", ".join(sorted(JSON_TYPE_NAMES.get(kind, kind.__name__) for kind in found - accepted))
        raise InvalidArgument(f"{where}: data holds {names}, not {dt.name} values")
    try:
        return values.astype(dt.numpy)
    except OverflowError:
        raise InvalidArgument(f"{where}: a value does not fit in {dt.name}") from None


def _flatten(data: list[Any], where: str) -> list[Any]:
    flat: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]  # each open level and the index of its next item
    while stack:
        items, index = stack[-1]
        if index == len(items):
            stack.pop()
            continue
        stack[-1] = (items, index + 1)
        item = items[index]
        if isinstance(item, list):
            if len(stack) >= MAX_NESTING:
                raise InvalidArgument(f"{where}: data nested more than {MAX_NESTING} deep")
            stack.append((item, 0))
        else:
            flat.append(item)
    return flat


# ---------------------------------------------------------------------------------------------- encoding


def encode_infer_response(result: InferResult, request: InferRequestBody) -> tuple[list[bytes], int | None]:
    """The body's parts and, when some output is binary, the length of its JSON header (for
    Inference-Header-Content-Length)."""
    binary_asked = {o.name: o.parameters.get("binary_data") for o in request.outputs}
    default = request.binary_output_default
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, array in result.outputs:
        asked = binary_asked.get(spec.name)
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if default if asked is None else asked:
            raw = to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_values(array)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.request_id:
        document["id"] = result.request_id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    return [header, *blobs], (len(header) if blobs else None)


def json_values(array: np.ndarray) -> list[Any]:
    """The flattened values of an output as JSON takes them; BYTES as text (invalid UTF-8 replaced: JSON
    strings are text; ask for binary_data to get the bytes exactly)."""
    flat = array.ravel()
    if flat.dtype == np.object_ or flat.dtype.kind in "SU":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    values: list[Any] = flat.tolist()
    return values

