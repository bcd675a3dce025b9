"""onnx_serve.core.codec on its own: V2 tensors (real protobuf InferInputTensor messages) decoded to numpy,
the BYTES raw encoding, and the checks in-process numpy inputs go through (check_arrays).

Every refusal is an InvalidArgument whose message names the input, raised before anything is allocated
from a size the request declares."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
from onnx_serve.core.codec import MAX_RANK, check_arrays, decode_input, element_count
from onnx_serve.core.errors import InvalidArgument
from onnx_serve.protos.inference.grpc_service_pb2 import InferTensorContents, ModelInferRequest
from onnx_serve.types import DATATYPES, TensorSpec, deserialize_bytes, serialize_bytes, to_raw

InferInputTensor = ModelInferRequest.InferInputTensor
MAX_ELEMENTS = 1 << 20

# One [2, 3] sample per V2 datatype, holding the extremes of the type where it has them.
SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True, False, False],
    "UINT8": [0, 1, 2, 127, 254, 255],
    "UINT16": [0, 1, 2, 300, 65534, 65535],
    "UINT32": [0, 1, 2, 70000, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2, 2**40, 2**64 - 2, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 100, 127],
    "INT16": [-32768, -1, 0, 1, 1000, 32767],
    "INT32": [-(2**31), -1, 0, 1, 70000, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 1, 2**40, 2**63 - 1],
    "FP16": [-65504.0, -1.5, 0.0, 0.25, 1.0, 65504.0],
    "FP32": [-3.4e38, -1.5, 0.0, 0.25, 1.0, 3.4e38],
    "FP64": [-1.7e308, -1.5, 0.0, 0.25, 1.0, 1.7e308],
    "BYTES": [b"", b"a", "caf\u00e9".encode(), b"with\x00nul", b"\xe2\x82\xac", b"x" * 300],
}
TYPED_DATATYPES = [name for name, dt in DATATYPES.items() if dt.contents_field is not None]


def sample(datatype: str) -> np.ndarray:
    values = SAMPLES[datatype]
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        return array.reshape(2, 3)
    return np.array(values, dtype=DATATYPES[datatype].numpy).reshape(2, 3)


def as_text(array: np.ndarray) -> np.ndarray:
    """What the server hands ONNX Runtime for BYTES: the elements decoded as UTF-8 str."""
    texts = np.empty(array.size, dtype=np.object_)
    texts[:] = [item.decode("utf-8") for item in array.flat]
    return texts.reshape(array.shape)


def input_tensor(datatype: str, shape: list[int], name: str = "x", **contents: Any) -> Any:
    """A real InferInputTensor; `contents` are InferTensorContents fields (none: raw contents)."""
    tensor = InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(InferTensorContents(**contents))
    return tensor


def test_every_v2_datatype_has_a_sample() -> None:
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_raw_contents_of_every_datatype_round_trip(datatype: str) -> None:
    array = sample(datatype)
    tensor = input_tensor(datatype, [2, 3])
    decoded = decode_input(tensor, to_raw(array), TensorSpec("x", datatype, (-1, 3)), MAX_ELEMENTS)
    assert decoded.shape == (2, 3)
    if datatype == "BYTES":
        assert decoded.dtype == np.object_
        assert decoded.tolist() == as_text(array).tolist()
        assert all(isinstance(item, str) for item in decoded.flat)
    else:
        assert decoded.dtype == DATATYPES[datatype].numpy
        np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", TYPED_DATATYPES)
def test_typed_contents_of_every_datatype_round_trip(datatype: str) -> None:
    array = sample(datatype)
    field = DATATYPES[datatype].contents_field
    assert field is not None
    values: dict[str, Any] = {field: array.ravel().tolist()}
    tensor = input_tensor(datatype, [2, 3], **values)
    decoded = decode_input(tensor, None, TensorSpec("x", datatype, (2, 3)), MAX_ELEMENTS)
    assert decoded.shape == (2, 3)
    if datatype == "BYTES":
        assert decoded.tolist() == as_text(array).tolist()
    elif datatype == "FP32":  # fp32_contents carries float32: the sample's values are float32 already
        np.testing.assert_array_equal(decoded, array)
        assert decoded.dtype == np.float32
    else:
        assert decoded.dtype == DATATYPES[datatype].numpy
        np.testing.assert_array_equal(decoded, array)


def test_fp16_has_no_typed_contents_and_is_refused_there() -> None:
    tensor = input_tensor("FP16", [1], fp32_contents=[1.0])
    with pytest.raises(InvalidArgument, match=r"input 'x': FP16 can only be sent as raw_input_contents"):
        decode_input(tensor, None, None, MAX_ELEMENTS)


def test_raw_contents_are_viewed_without_a_copy() -> None:
    raw = to_raw(np.arange(12, dtype=np.float32))
    decoded = decode_input(input_tensor("FP32", [3, 4]), raw, None, MAX_ELEMENTS)
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))
    base: object = decoded
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert base is raw
    assert not decoded.flags.writeable  # a view of immutable bytes


def test_a_zero_element_tensor_decodes_from_empty_raw_contents() -> None:
    decoded = decode_input(input_tensor("FP32", [0, 4]), b"", TensorSpec("x", "FP32", (-1, 4)), MAX_ELEMENTS)
    assert decoded.shape == (0, 4) and decoded.dtype == np.float32


@pytest.mark.parametrize(("datatype", "size", "needs"), [("FP32", 15, 16), ("FP32", 17, 16), ("INT64", 8, 32),
                                                         ("UINT8", 0, 4)])
def test_raw_contents_of_the_wrong_size_are_refused(datatype: str, size: int, needs: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_input(input_tensor(datatype, [2, 2], name="pixels"), b"\0" * size, None, MAX_ELEMENTS)
    assert str(caught.value) == (f"input 'pixels': raw contents hold {size} bytes, but shape [2, 2] of {datatype} "
                                 f"needs {needs}")


def test_typed_contents_with_the_wrong_count_are_refused() -> None:
    tensor = input_tensor("INT32", [2, 2], name="ids", int_contents=[1, 2, 3])
    with pytest.raises(InvalidArgument, match=r"^input 'ids': 3 values in contents, but shape \[2, 2\] needs 4$"):
        decode_input(tensor, None, None, MAX_ELEMENTS)


@pytest.mark.parametrize(("datatype", "field", "value"), [("UINT8", "uint_contents", 256),
                                                          ("UINT16", "uint_contents", 70000),
                                                          ("INT8", "int_contents", -129),
                                                          ("INT16", "int_contents", 40000)])
def test_typed_values_that_do_not_fit_the_datatype_are_refused(datatype: str, field: str, value: int) -> None:
    tensor = input_tensor(datatype, [1], name="small", **{field: [value]})
    with pytest.raises(InvalidArgument, match=rf"^input 'small': a value does not fit in {datatype}$"):
        decode_input(tensor, None, None, MAX_ELEMENTS)


def test_typed_contents_in_the_field_of_another_datatype_are_refused() -> None:
    tensor = input_tensor("FP32", [1], name="x", int_contents=[1])
    expected = r"input 'x': int_contents set for a FP32 tensor \(expected fp32_contents\)"
    with pytest.raises(InvalidArgument, match=expected):
        decode_input(tensor, None, None, MAX_ELEMENTS)


def test_both_raw_and_typed_contents_are_refused() -> None:
    tensor = input_tensor("FP32", [1], name="x", fp32_contents=[1.0])
    with pytest.raises(InvalidArgument, match=r"input 'x': both raw_input_contents and typed contents are set"):
        decode_input(tensor, b"\0" * 4, None, MAX_ELEMENTS)


def test_a_tensor_without_data_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'x': no data"):
        decode_input(input_tensor("FP32", [1]), None, None, MAX_ELEMENTS)


def test_an_unknown_datatype_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'x': unknown datatype 'FP8' \(expected one of BOOL, .*BYTES\)"):
        decode_input(input_tensor("FP8", [1]), b"\0", None, MAX_ELEMENTS)


def test_a_datatype_other_than_the_models_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'x': datatype FP64 does not match the model's FP32"):
        decode_input(input_tensor("FP64", [1, 3]), b"\0" * 24, TensorSpec("x", "FP32", (-1, 3)), MAX_ELEMENTS)


@pytest.mark.parametrize("shape", [[3], [1, 4], [1, 3, 1]])
def test_a_shape_other_than_the_models_is_refused(shape: list[int]) -> None:
    count = int(np.prod(shape))
    with pytest.raises(InvalidArgument, match=r"input 'x': shape \[.*\] does not match the model's \[-1, 3\]"):
        decode_input(input_tensor("FP32", shape), b"\0" * 4 * count, TensorSpec("x", "FP32", (-1, 3)), MAX_ELEMENTS)


def test_a_negative_dimension_is_refused_even_where_the_model_axis_is_dynamic() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'x': shape \[-1, 3\] has a negative dimension"):
        decode_input(input_tensor("FP32", [-1, 3]), b"", TensorSpec("x", "FP32", (-1, 3)), MAX_ELEMENTS)


def test_more_dimensions_than_numpy_supports_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=rf"input 'x': shape has {MAX_RANK + 1} dimensions, more than the "
                                              rf"{MAX_RANK} supported"):
        decode_input(input_tensor("FP32", [1] * (MAX_RANK + 1)), b"\0" * 4, None, MAX_ELEMENTS)


@pytest.mark.parametrize("shape", [[2**62, 2**62], [2**63 - 1], [0, 2**62], [MAX_ELEMENTS + 1]])
def test_huge_dimensions_are_refused_before_anything_is_allocated(shape: list[int]) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match=rf"input 'x': shape \[.*\] (holds more than|has a dimension "
                                                  rf"above) {MAX_ELEMENTS}"):
            decode_input(input_tensor("FP32", shape), b"", None, MAX_ELEMENTS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_bytes_shape_larger_than_its_raw_contents_is_refused_before_allocating_it() -> None:
    raw = serialize_bytes(np.array([b"ab"], dtype=np.object_))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match=r"input 'x': raw contents hold 1 BYTES elements, shape needs "
                                                  r"100000000"):
            decode_input(input_tensor("BYTES", [100_000_000]), raw, None, 10**9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # an object array of 10**8 elements would be 800 MB


def test_element_count_multiplies_the_dimensions() -> None:
    assert element_count((2, 3, 4), "input 'x'", 24) == 24
    assert element_count((), "input 'x'", 1) == 1
    assert element_count((5, 0), "input 'x'", 10) == 0
    with pytest.raises(InvalidArgument, match=r"input 'x': shape \[5, 5\] holds more than 24 elements"):
        element_count((5, 5), "input 'x'", 24)


# ---------------------------------------------------------------------------------------------- BYTES


def test_bytes_encoding_is_a_little_endian_length_before_each_element() -> None:
    array = np.array([b"ab", b"", "\u00e9"], dtype=np.object_)
    raw = serialize_bytes(array)
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "\u00e9".encode()
    assert deserialize_bytes(raw, 3, "input 'x'").tolist() == [b"ab", b"", "\u00e9".encode()]


@pytest.mark.parametrize("array", [np.array(["a", "bc", "\u20ac"]), np.array([b"a", b"bc", b"\xe2\x82\xac"]),
                                   np.array(["a", b"bc", "\u20ac"], dtype=np.object_)],
                         ids=["str-array", "bytes-array", "object-array"])
def test_bytes_round_trip_from_str_bytes_and_object_arrays(array: np.ndarray) -> None:
    raw = to_raw(array)
    assert deserialize_bytes(raw, 3, "input 'x'").tolist() == [b"a", b"bc", b"\xe2\x82\xac"]
    decoded = decode_input(input_tensor("BYTES", [3]), raw, None, MAX_ELEMENTS)
    assert decoded.tolist() == ["a", "bc", "\u20ac"]


def test_no_bytes_elements_decode_from_empty_raw_contents() -> None:
    assert decode_input(input_tensor("BYTES", [0]), b"", None, MAX_ELEMENTS).shape == (0,)


@pytest.mark.parametrize(("raw", "count", "message"), [
    (b"\x01\x00\x00", 1, r"input 'x': malformed BYTES raw contents \(expected 1 elements\)"),
    (struct.pack("<I", 5) + b"abc", 1, r"input 'x': BYTES element 0 runs past the end of the raw contents"),
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 2**32 - 1), 2,
     r"input 'x': BYTES element 1 runs past the end of the raw contents"),
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b", 1,
     r"input 'x': malformed BYTES raw contents \(expected 1 elements\)"),
    (struct.pack("<I", 1) + b"a", 2, r"input 'x': raw contents hold 1 BYTES elements, shape needs 2"),
    (b"", 1, r"input 'x': raw contents hold 0 BYTES elements, shape needs 1"),
], ids=["truncated-length", "element-past-end", "huge-length", "too-many-elements", "too-few-elements", "empty"])
def test_malformed_bytes_raw_contents_are_refused(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deserialize_bytes(raw, count, "input 'x'")
    with pytest.raises(InvalidArgument, match=message):
        decode_input(input_tensor("BYTES", [count]), raw, None, MAX_ELEMENTS)


def test_bytes_that_are_not_utf8_are_refused_from_raw_contents() -> None:
    raw = serialize_bytes(np.array([b"ok", b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InvalidArgument, match=r"input 'text': BYTES element 1 is not valid UTF-8"):
        decode_input(input_tensor("BYTES", [2], name="text"), raw, None, MAX_ELEMENTS)


def test_bytes_that_are_not_utf8_are_refused_from_typed_contents() -> None:
    tensor = input_tensor("BYTES", [1, 2], name="text", bytes_contents=[b"\xc3\x28", b"ok"])
    with pytest.raises(InvalidArgument, match=r"input 'text': BYTES element 0 is not valid UTF-8"):
        decode_input(tensor, None, None, MAX_ELEMENTS)


# --------------------------------------------------------------------------------------- check_arrays

ADD_SPECS = (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 4)))


def ones(shape: tuple[int, ...] = (2, 4), dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def test_check_arrays_passes_matching_inputs_through_unchanged() -> None:
    a, b = ones(), ones() * 2
    checked = check_arrays({"a": a, "b": b}, ADD_SPECS, MAX_ELEMENTS)
    assert list(checked) == ["a", "b"]
    assert checked["a"] is a and checked["b"] is b


def test_check_arrays_refuses_an_input_the_model_does_not_have() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'c': the model has no such input \(it takes a, b\)"):
        check_arrays({"a": ones(), "b": ones(), "c": ones()}, ADD_SPECS, MAX_ELEMENTS)


def test_check_arrays_names_every_missing_input() -> None:
    with pytest.raises(InvalidArgument, match=r"^missing input b$"):
        check_arrays({"a": ones()}, ADD_SPECS, MAX_ELEMENTS)
    with pytest.raises(InvalidArgument, match=r"^missing inputs a, b$"):
        check_arrays({}, ADD_SPECS, MAX_ELEMENTS)


@pytest.mark.parametrize(("dtype", "name"), [(np.float64, "FP64"), (np.int32, "INT32"), (np.float16, "FP16"),
                                             (np.bool_, "BOOL")])
def test_check_arrays_refuses_the_wrong_dtype(dtype: Any, name: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"input 'b': datatype {name} does not match the model's FP32"):
        check_arrays({"a": ones(), "b": ones(dtype=dtype)}, ADD_SPECS, MAX_ELEMENTS)


def test_check_arrays_refuses_a_dtype_v2_has_no_name_for() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'a': numpy dtype complex64 is not a V2 datatype"):
        check_arrays({"a": ones(dtype=np.complex64), "b": ones()}, ADD_SPECS, MAX_ELEMENTS)


@pytest.mark.parametrize("shape", [(4,), (2, 3), (1, 4, 1)])
def test_check_arrays_refuses_the_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument, match=r"input 'a': shape \[.*\] does not match the model's \[-1, 4\]"):
        check_arrays({"a": ones(shape), "b": ones()}, ADD_SPECS, MAX_ELEMENTS)


def test_check_arrays_refuses_more_elements_than_allowed() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'a': shape \[3, 4\] holds more than 8 elements"):
        check_arrays({"a": ones((3, 4)), "b": ones((3, 4))}, ADD_SPECS, 8)


@pytest.mark.parametrize("given", [np.array(["caf\u00e9", "b"]), np.array(["caf\u00e9".encode(), b"b"]),
                                   np.array(["caf\u00e9", b"b"], dtype=np.object_)],
                         ids=["str-array", "bytes-array", "mixed-object-array"])
def test_check_arrays_takes_str_and_bytes_for_bytes_inputs_and_hands_on_str(given: np.ndarray) -> None:
    checked = check_arrays({"text": given}, [TensorSpec("text", "BYTES", (-1,))], MAX_ELEMENTS)
    assert checked["text"].dtype == np.object_
    assert checked["text"].tolist() == ["caf\u00e9", "b"]
    assert all(type(item) is str for item in checked["text"].flat)


def test_check_arrays_refuses_bytes_inputs_that_are_not_utf8() -> None:
    given = np.array([b"ok", b"\xff"], dtype=np.object_)
    with pytest.raises(InvalidArgument, match=r"input 'text': BYTES element 1 is not valid UTF-8"):
        check_arrays({"text": given}, [TensorSpec("text", "BYTES", (-1,))], MAX_ELEMENTS)


def test_check_arrays_refuses_text_for_a_numeric_input() -> None:
    with pytest.raises(InvalidArgument, match=r"input 'a': datatype BYTES does not match the model's FP32"):
        check_arrays({"a": np.array([["1", "2", "3", "4"]]), "b": ones()}, ADD_SPECS, MAX_ELEMENTS)


def test_check_arrays_hands_big_endian_arrays_on_in_the_native_order() -> None:
    spec = TensorSpec("x", "FP32", (-1,))
    [checked] = check_arrays({"x": np.arange(4, dtype=">f4")}, [spec], 100).values()
    assert checked.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(checked, [0, 1, 2, 3])


@pytest.mark.parametrize("item", [None, 3, 1.5, object()])
def test_check_arrays_refuses_bytes_elements_that_are_neither_str_nor_bytes(item: object) -> None:
    spec = TensorSpec("s", "BYTES", (-1,))
    given = np.empty(2, dtype=np.object_)
    given[:] = ["ok", item]
    with pytest.raises(InvalidArgument, match="input 's': BYTES element 1 is a"):
        check_arrays({"s": given}, [spec], 100)
