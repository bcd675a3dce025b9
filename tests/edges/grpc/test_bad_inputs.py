"""The V2 bad-input matrix (issue 8, item 1): every field of a ModelInferRequest given a wrong value in turn.
Each gets the status of DESIGN.md §6 with a message naming the field, the server stays live and serving after
each, and thousands of bad requests leave its memory (and its metrics) flat. Requests go through our own stubs
on a raw channel, since tritonclient refuses some of them client-side."""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto
from onnx_serve.protos.inference import grpc_service_pb2 as pb

from tests.helpers.inprocess import InProcessServer, server_fixture
from tests.helpers.serving import (
    add_model,
    fixed_shape_model,
    identity_model,
    int64_bool_model,
    string_model,
)

Request = pb.ModelInferRequest
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
MAX_BATCH = 4
ONE_ROW = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")
    (root / "add" / "config.yaml").write_text(f"max_batch_size: {MAX_BATCH}\n")
    identity_model(root / "wide" / "1" / "model.onnx", TensorProto.FLOAT, shape=("N", "M"))
    identity_model(root / "id_fp16" / "1" / "model.onnx", TensorProto.FLOAT16)
    identity_model(root / "id_int8" / "1" / "model.onnx", TensorProto.INT8)
    int64_bool_model(root / "where" / "1" / "model.onnx")
    fixed_shape_model(root / "fixed" / "1" / "model.onnx")
    string_model(root / "strings" / "1" / "model.onnx")
    return root


server = server_fixture()


@pytest.fixture(scope="module")
def stub(server: InProcessServer, v2_stub_for: Callable) -> object:
    return v2_stub_for(server.url)


def add_request(a: np.ndarray = ONE_ROW, b: np.ndarray | None = None, **fields: object) -> Request:
    """A good request for 'add' (raw contents), to be spoiled one field at a time."""
    b = a if b is None else b
    request = Request(model_name="add", **fields)
    for name, array in (("a", a), ("b", b)):
        request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def spoil(request: Request, change: Callable[[Request], object]) -> Request:
    change(request)
    return request


def typed(model: str, name: str, datatype: str, shape: list[int], field: str, values: list) -> Request:
    request = Request(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def raw(model: str, name: str, datatype: str, shape: list[int], data: bytes) -> Request:
    request = Request(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def with_parameter(request: Request, key: str, kind: str, value: object) -> Request:
    setattr(request.parameters[key], kind, value)
    return request


@dataclass(frozen=True)
class Case:
    request: Request
    code: grpc.StatusCode
    words: tuple[str, ...]  # all must appear in the message: the field it names, and what is wrong


def field_case(code: grpc.StatusCode, request: Request, *words: str) -> Case:
    return Case(request, code, words)


def named(model_name: str) -> Request:
    return spoil(add_request(), lambda r: setattr(r, "model_name", model_name))


def input_field(field: str, value: object, index: int = 0) -> Request:
    """add_request() with one field of one input spoiled."""
    return spoil(add_request(), lambda r: setattr(r.inputs[index], field, value))


def del_input(request: Request, index: int) -> None:
    del request.inputs[index]
    del request.raw_input_contents[index]


HUGE = 2**62
CASES: dict[str, Case] = {
    # model_name / model_version
    "unknown model": field_case(NOT_FOUND, named("nope"), "model", "nope"),
    "empty model name": field_case(NOT_FOUND, named(""), "model name"),
    "model name 100k chars": field_case(NOT_FOUND, named("m" * 100_000), "model", "truncated"),
    "path traversal model name": field_case(NOT_FOUND, named("../add"), "model"),
    "model name with a NUL byte": field_case(NOT_FOUND, named("add\0"), "model"),
    "unknown version": field_case(NOT_FOUND, add_request(model_version="9"), "version", "9"),
    "non-numeric version": field_case(INVALID, add_request(model_version="latest"), "model_version", "latest"),
    "negative version": field_case(INVALID, add_request(model_version="-1"), "model_version"),
    "non-ASCII digit version": field_case(INVALID, add_request(model_version="\u0663"), "model_version"),
    "superscript version": field_case(INVALID, add_request(model_version="\u00b2"), "model_version"),
    "5000-digit version": field_case(INVALID, add_request(model_version="9" * 5000), "model_version"),
    # inputs: names
    "unknown input": field_case(INVALID, input_field("name", "c", 1), "input 'c'", "no such input"),
    "missing input": field_case(INVALID, spoil(add_request(), lambda r: del_input(r, 1)), "missing input", "b"),
    "no inputs at all": field_case(INVALID, Request(model_name="add"), "missing input"),
    "duplicate input": field_case(INVALID, input_field("name", "a", 1), "input 'a'", "twice"),
    "input name 100k chars": field_case(INVALID, input_field("name", "x" * 100_000), "input 'xxx"),
    # outputs
    "unknown requested output": field_case(INVALID, spoil(add_request(), lambda r: r.outputs.add(name="nope")),
                                           "requested output 'nope'"),
    "classification asked of an output": field_case(INVALID, spoil(add_request(), lambda r: r.outputs.add(
        name="sum").parameters["classification"].SetInParent()), "requested output 'sum'", "classification"),
    "shared memory asked for an output": field_case(INVALID, spoil(add_request(), lambda r: r.outputs.add(
        name="sum").parameters["shared_memory_region"].SetInParent()), "requested output 'sum'", "shared_memory"),
    "the same output asked for many times": field_case(INVALID, spoil(add_request(), lambda r: [
        r.outputs.add(name="sum") for _ in range(10_000)]), "requested output 'sum'", "twice"),
    # datatype
    "unknown datatype": field_case(INVALID, input_field("datatype", "FLOAT32"), "input 'a'", "datatype 'FLOAT32'"),
    "empty datatype": field_case(INVALID, input_field("datatype", ""), "input 'a'", "datatype"),
    "lower-case datatype": field_case(INVALID, input_field("datatype", "fp32"), "input 'a'", "datatype 'fp32'"),
    "datatype 100k chars": field_case(INVALID, input_field("datatype", "F" * 100_000), "input 'a'", "datatype"),
    "mismatched datatype": field_case(INVALID, input_field("datatype", "FP64"), "input 'a'", "FP64", "FP32"),
    "BYTES where numbers are expected": field_case(INVALID, input_field("datatype", "BYTES"), "input 'a'", "BYTES"),
    "bytes_contents for an FP32 tensor": field_case(
        INVALID, typed("fixed", "x", "FP32", [2, 2], "bytes_contents", [b"1", b"2", b"3", b"4"]),
        "input 'x'", "bytes_contents"),
    # shape
    "negative dim": field_case(INVALID, raw("wide", "x", "FP32", [-1, 4], b""), "input 'x'", "negative"),
    "int64-min dim": field_case(INVALID, raw("wide", "x", "FP32", [-(2**63), 1], b""), "input 'x'", "negative"),
    "zero batch": field_case(INVALID, add_request(np.zeros((0, 4), np.float32)), "batch"),
    "huge dims": field_case(INVALID, raw("wide", "x", "FP32", [HUGE, 4], b""), "input 'x'", "elements"),
    "overflowing dims": field_case(INVALID, raw("wide", "x", "FP32", [HUGE, HUGE], b""), "input 'x'", "elements"),
    "overflow to zero": field_case(INVALID, raw("wide", "x", "FP32", [2**32, 2**32], b""), "input 'x'", "elements"),
    "huge then zero dim": field_case(INVALID, raw("wide", "x", "FP32", [HUGE, 0], b""), "input 'x'"),
    "zero then huge dim": field_case(INVALID, raw("wide", "x", "FP32", [0, HUGE], b""), "input 'x'", "dimension"),
    "zero then int64-max dim": field_case(INVALID, raw("wide", "x", "FP32", [0, 2**63 - 1], b""), "input 'x'"),
    "wrong rank (70 zeros)": field_case(INVALID, raw("wide", "x", "FP32", [0] * 70, b""), "input 'x'", "shape"),
    "wrong rank (1)": field_case(INVALID, raw("wide", "x", "FP32", [4], b"\0" * 16), "input 'x'", "shape [4]"),
    "wrong rank (3)": field_case(INVALID, spoil(add_request(), lambda r: r.inputs[0].shape.append(1)),
                                 "input 'a'", "shape [1, 4, 1]"),
    "empty shape": field_case(INVALID, spoil(add_request(), lambda r: r.inputs[0].ClearField("shape")),
                              "input 'a'", "shape []"),
    "wrong fixed dim": field_case(INVALID, spoil(add_request(), lambda r: r.inputs[0].shape.__setitem__(1, 5)),
                                  "input 'a'", "shape [1, 5]"),
    "fixed-shape model given a batch": field_case(INVALID, raw("fixed", "x", "FP32", [1, 2, 2], b"\0" * 16),
                                                  "input 'x'", "shape"),
    "batch above max_batch_size": field_case(INVALID, add_request(np.zeros((MAX_BATCH + 1, 4), np.float32)),
                                             "max_batch_size"),
    "inputs with different batch sizes": field_case(
        INVALID, add_request(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)), "batch"),
    # contents
    "raw contents too short": field_case(INVALID, spoil(add_request(), lambda r: r.raw_input_contents.__setitem__(
        0, b"\0" * 15)), "input 'a'", "15 bytes", "16"),
    "raw contents too long": field_case(INVALID, spoil(add_request(), lambda r: r.raw_input_contents.__setitem__(
        1, b"\0" * 17)), "input 'b'", "17 bytes"),
    "raw and typed contents both set": field_case(
        INVALID, spoil(add_request(), lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 4)),
        "input 'a'", "both"),
    "fewer raw_input_contents than inputs": field_case(
        INVALID, spoil(add_request(), lambda r: r.raw_input_contents.pop()), "raw_input_contents", "1", "2"),
    "more raw_input_contents than inputs": field_case(
        INVALID, spoil(add_request(), lambda r: r.raw_input_contents.append(b"")), "raw_input_contents", "3"),
    "no data for an input": field_case(INVALID, spoil(typed("fixed", "x", "FP32", [2, 2], "fp32_contents", []),
                                                      lambda r: r.inputs[0].ClearField("contents")),
                                       "input 'x'", "no data"),
    "typed contents too few": field_case(INVALID, typed("fixed", "x", "FP32", [2, 2], "fp32_contents", [1.0] * 3),
                                         "input 'x'", "3 values"),
    "typed contents too many": field_case(INVALID, typed("fixed", "x", "FP32", [2, 2], "fp32_contents", [1.0] * 5),
                                          "input 'x'", "5 values"),
    "typed contents in the wrong field": field_case(
        INVALID, typed("fixed", "x", "FP32", [2, 2], "int_contents", [1] * 4), "input 'x'", "int_contents"),
    "typed value out of range": field_case(
        INVALID, typed("id_int8", "x", "INT8", [1, 3], "int_contents", [1, 300, 2]), "input 'x'", "INT8"),
    "FP16 via typed contents": field_case(
        INVALID, typed("id_fp16", "x", "FP16", [1, 3], "fp32_contents", [1.0] * 3), "input 'x'", "FP16", "raw"),
    "BYTES element not UTF-8": field_case(
        INVALID, typed("strings", "x", "BYTES", [2], "bytes_contents", [b"ok", b"\xff"]), "input 'x'", "UTF-8"),
    "BYTES raw length past the end": field_case(
        INVALID, raw("strings", "x", "BYTES", [1], struct.pack("<I", 2**31) + b"ab"), "input 'x'", "BYTES"),
    "BYTES raw truncated length prefix": field_case(INVALID, raw("strings", "x", "BYTES", [1], b"\x01\x00"),
                                                    "input 'x'", "BYTES"),
    "BYTES raw too many elements": field_case(INVALID, raw("strings", "x", "BYTES", [1], b"\0" * 8),
                                              "input 'x'", "BYTES"),
    "BYTES raw too few elements": field_case(INVALID, raw("strings", "x", "BYTES", [3], struct.pack("<I", 0)),
                                             "input 'x'", "BYTES"),
    "BOOL raw one byte short": field_case(INVALID, spoil(raw("where", "x", "INT64", [1, 3], b"\0" * 24), lambda r: (
        r.inputs.add(name="mask", datatype="BOOL", shape=[1, 3]), r.raw_input_contents.append(b"\1\0"))),
        "input 'mask'", "2 bytes"),
    # parameters
    "unknown request parameter": field_case(INVALID, with_parameter(add_request(), "bogus", "bool_param", True),
                                            "parameters", "bogus"),
    "negative timeout": field_case(INVALID, with_parameter(add_request(), "timeout", "int64_param", -5),
                                   "parameters.timeout"),
    "timeout of the wrong type": field_case(INVALID, with_parameter(add_request(), "timeout", "string_param", "soon"),
                                            "parameters.timeout"),
}


def status_of(stub: object, request: Request) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def assert_serving(stub: object) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    response = stub.ModelInfer(add_request(id="after"), timeout=10)
    assert response.id == "after"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), 2 * ONE_ROW.ravel())


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_request_gets_its_status_and_the_server_keeps_serving(stub: object, case: Case) -> None:
    code, message = status_of(stub, case.request)
    assert code == case.code, message
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(message) < 1000
    assert_serving(stub)


def test_bad_requests_in_a_stream_get_error_responses_with_their_ids(stub: object) -> None:
    bad = list(CASES.items())[:20]
    requests = []
    for i, (_, case) in enumerate(bad):
        request = Request()
        request.CopyFrom(case.request)
        request.id = f"bad-{i}"
        requests.append(request)
    requests.append(add_request(id="good"))
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {r.id for r in requests}
    assert by_id["good"].error_message == ""
    for i, (_, case) in enumerate(bad):
        message = by_id[f"bad-{i}"].error_message
        assert message and all(word in message for word in case.words), message
    assert_serving(stub)


def test_good_edge_values_are_served(stub: object) -> None:
    """What looks odd but is well formed: a zero-length non-batch axis, an empty string, a huge timeout."""
    response = stub.ModelInfer(raw("wide", "x", "FP32", [2, 0], b""), timeout=10)
    assert list(response.outputs[0].shape) == [2, 0]
    response = stub.ModelInfer(typed("strings", "x", "BYTES", [2], "bytes_contents", [b"", b"\0"]), timeout=10)
    assert response.raw_output_contents[0] == struct.pack("<I", 0) + struct.pack("<I", 1) + b"\0"
    stub.ModelInfer(with_parameter(add_request(), "timeout", "int64_param", 2**63 - 1), timeout=10)
    stub.ModelInfer(with_parameter(add_request(), "timeout", "uint64_param", 2**64 - 1), timeout=10)
    stub.ModelInfer(with_parameter(add_request(), "priority", "uint64_param", 1), timeout=10)


def test_huge_dims_are_rejected_before_allocation_and_fast(stub: object) -> None:
    started = time.monotonic()
    for dims in ([HUGE, HUGE], [2**63 - 1, 1], [2**31, 2**31], [HUGE, 4]):
        code, _ = status_of(stub, raw("wide", "x", "FP32", dims, b""))
        assert code == INVALID
        code, _ = status_of(stub, raw("strings", "x", "BYTES", dims[:1], b""))
        assert code == INVALID
    assert time.monotonic() - started < 2.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_and_metrics_stay_flat_under_bad_requests(server: InProcessServer, stub: object) -> None:
    matrix = [case.request for case in CASES.values()]

    def burst(count: int) -> list[str]:
        names = []
        futures = []
        for i in range(count):
            request = matrix[i % len(matrix)]
            if i % 5 == 0:  # a fresh unknown model name each time: must not create a metrics series per name
                request = spoil(add_request(), lambda r: setattr(r, "model_name", f"ghost-{uuid.uuid4().hex}"))
                names.append(request.model_name)
            futures.append(stub.ModelInfer.future(request, timeout=30))
            if len(futures) >= 64:
                for future in futures:
                    future.exception()
                futures.clear()
        for future in futures:
            future.exception()
        return names

    burst(600)  # warm-up: arenas, caches, lazily created series
    before = rss_kib(server.pid)
    ghosts = burst(2000)
    after = rss_kib(server.pid)
    assert after - before < 20 * 1024, f"RSS grew from {before} KiB to {after} KiB over 2,000 bad requests"
    metrics = server.scrape()
    assert not any(name in metrics for name in ghosts[:50])
    assert 'model="(unknown)"' in metrics
    assert_serving(stub)
