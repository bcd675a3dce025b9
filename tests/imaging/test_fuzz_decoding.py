"""Property-based fuzzing of V2 request decoding (hypothesis), in process and against a live server.

The property: decoding untrusted tensors either yields arrays of exactly the declared shape and datatype, or
raises InvalidArgument; never another exception (which the server would answer INTERNAL), and never an
allocation sized by the request before it is checked. Bounded: a few hundred examples, no deadline, < 30 s."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx_serve.core.codec import decode_input
from onnx_serve.core.dataplane import requested_output_indexes
from onnx_serve.core.errors import InvalidArgument
from onnx_serve.core.runtime import Signature
from onnx_serve.edges.grpc.converters import decode_request, requested_outputs
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.types import DATATYPES, TensorSpec

from tests.helpers.inprocess import connection_fixture, server_fixture
from tests.helpers.serving import add_model, identity_model, string_model

MAX_ELEMENTS = 64 * 1024 * 1024  # what the server uses: --max-message-bytes
InferInputTensor = pb.ModelInferRequest.InferInputTensor
IN_PROCESS = settings(max_examples=400, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIVE = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CONTENT_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=12),
}
DATATYPE_NAMES = st.one_of(st.sampled_from(sorted(DATATYPES)),
                           st.sampled_from(["", "FP8", "fp32", "FLOAT", "STRING", "BF16", "INT128"]),
                           st.text(max_size=8))
DIM = st.one_of(st.integers(-2, 5), st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, -(2**63), MAX_ELEMENTS + 1]))
SHAPES = st.one_of(st.lists(st.integers(0, 4), max_size=4), st.lists(DIM, max_size=6),
                   st.lists(st.integers(0, 1), min_size=60, max_size=70))  # ranks around numpy's limit of 64


@st.composite
def tensors(draw: st.DrawFn, names: tuple[str, ...] = ("x",)) -> tuple[InferInputTensor, bytes | None]:
    """One input tensor and its raw contents (None: typed contents, or no data). Half the time the data is
    consistent with the declared shape, so the decoders' success paths are exercised too."""
    datatype = draw(DATATYPE_NAMES)
    shape = draw(SHAPES)
    tensor = InferInputTensor(name=draw(st.sampled_from(names)), datatype=datatype, shape=shape)
    declared = math.prod(shape) if all(d >= 0 for d in shape) else -1  # Python ints: no overflow
    count = declared if 0 <= declared <= 64 else draw(st.integers(0, 8))
    dt = DATATYPES.get(datatype)
    consistent = draw(st.booleans())
    mode = draw(st.sampled_from(["raw", "typed", "both", "none"]))
    raw = None
    if mode in ("raw", "both"):
        if consistent and dt is not None and dt.name == "BYTES":
            items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
            raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
        elif consistent and dt is not None:
            raw = draw(st.binary(min_size=count * dt.numpy.itemsize, max_size=count * dt.numpy.itemsize))
        else:
            raw = draw(st.binary(max_size=64))
    if mode in ("typed", "both"):
        field = (dt.contents_field if consistent and dt is not None and dt.contents_field
                 else draw(st.sampled_from(sorted(CONTENT_VALUES))))
        size = count if consistent else draw(st.integers(0, 10))
        getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_VALUES[field], min_size=size, max_size=size)))
    return tensor, raw


def assert_decoded(array: object, tensor: InferInputTensor) -> None:
    assert isinstance(array, np.ndarray)
    assert array.shape == tuple(tensor.shape)
    dt = DATATYPES[tensor.datatype]
    assert array.dtype == dt.numpy
    if dt.name == "BYTES":
        assert all(isinstance(item, str) for item in array.flat)  # what ONNX Runtime's string tensors take


@IN_PROCESS
@given(tensors())
def test_decode_input_without_a_spec(case: tuple[InferInputTensor, bytes | None]) -> None:
    tensor, raw = case
    try:
        array = decode_input(tensor, raw, None, MAX_ELEMENTS)
    except InvalidArgument:
        return
    assert_decoded(array, tensor)


SPEC_SHAPES = st.lists(st.sampled_from([-1, 0, 1, 2, 3]), max_size=3)


@IN_PROCESS
@given(tensors(), st.sampled_from(sorted(DATATYPES)), SPEC_SHAPES)
def test_decode_input_against_a_spec(case: tuple[InferInputTensor, bytes | None], datatype: str,
                                     spec_shape: list[int]) -> None:
    tensor, raw = case
    spec = TensorSpec("x", datatype, tuple(spec_shape))
    try:
        array = decode_input(tensor, raw, spec, MAX_ELEMENTS)
    except InvalidArgument:
        return
    assert_decoded(array, tensor)
    assert tensor.datatype == datatype and spec.accepts_shape(array.shape)


FAKE_SIGNATURE = Signature(
    inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT64", (-1,)), TensorSpec("s", "BYTES", (-1,))),
    outputs=(TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "BOOL", (-1,))))


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    use_raw = draw(st.booleans())
    for tensor, raw in draw(st.lists(tensors(("a", "b", "s", "c", "")), max_size=4)):
        request.inputs.append(tensor)
        if use_raw:
            request.raw_input_contents.append(raw if raw is not None else b"")
    for _ in range(draw(st.integers(0, 2))):  # sometimes one entry too many or too few
        if draw(st.booleans()):
            request.raw_input_contents.append(draw(st.binary(max_size=8)))
        elif request.raw_input_contents:
            request.raw_input_contents.pop()
    for name in draw(st.lists(st.sampled_from(["y", "z", "w", ""]), max_size=3)):
        request.outputs.add(name=name)
    return request


@IN_PROCESS
@given(requests())
def test_decode_request(request: pb.ModelInferRequest) -> None:
    try:
        wanted = requested_output_indexes(requested_outputs(request), FAKE_SIGNATURE)
    except InvalidArgument:
        pass
    else:
        assert all(0 <= i < 2 for i in wanted)
    try:
        inputs = decode_request(request, FAKE_SIGNATURE, MAX_ELEMENTS)
    except InvalidArgument:
        return
    assert set(inputs) == {"a", "b", "s"}
    by_name = {t.name: t for t in request.inputs}
    for name, array in inputs.items():
        assert_decoded(array, by_name[name])


# ------------------------------------------------------------------------------------------ live server

@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")
    identity_model(root / "m" / "1" / "model.onnx", TensorProto.FLOAT, shape=("N", 2))
    string_model(root / "s" / "1" / "model.onnx")
    return root


server = server_fixture()
channel = connection_fixture(grpc.insecure_channel)


EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def send(channel: grpc.Channel, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    try:
        call(payload, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@LIVE
@given(requests(), st.sampled_from(["m", "add", "s", "nope", ""]), st.sampled_from(["", "1", "2", "x"]))
def test_live_server_answers_random_requests_with_a_status(channel: grpc.Channel, request: pb.ModelInferRequest,
                                                           model: str, version: str) -> None:
    request.model_name, request.model_version = model, version
    assert send(channel, request.SerializeToString()) in EXPECTED


@LIVE
@given(st.binary(max_size=200), st.integers(0, 2**16))
def test_live_server_survives_corrupted_messages(channel: grpc.Channel, noise: bytes, seed: int) -> None:
    good = pb.ModelInferRequest(model_name="m")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    good.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    payload = bytearray(good.SerializeToString())
    rng = np.random.default_rng(seed)
    for _ in range(int(rng.integers(1, 4))):  # flip a few bytes, then append noise
        payload[int(rng.integers(len(payload)))] ^= int(rng.integers(1, 256))
    payload = bytes(payload) + noise
    code = send(channel, payload)
    try:
        pb.ModelInferRequest.FromString(payload)
    except Exception:  # not a valid message: grpc itself answers (INTERNAL, 'Exception deserializing request')
        return
    assert code in EXPECTED | {grpc.StatusCode.UNAVAILABLE}


def test_live_server_is_alive_and_correct_after_fuzzing(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.5, -2.0])
    response = stub.ModelInfer(request, timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.5, -2.0]
