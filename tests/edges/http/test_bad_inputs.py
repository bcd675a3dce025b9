"""Untrusted input on the HTTP edge, over raw sockets: malformed JSON, wrong types, shapes that do not match
the data, binary sizes that do not add up, missing and oversized headers, a body over the limit (refused before
it is read), slow heads and bodies, unknown routes and wrong methods. Each is a clear 4xx with the JSON error
body; none is a 500, a traceback or a hang, and the server serves on afterwards."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.edges.http.wire import Answer, call, closed_by_peer, exchange, read_answer, request_bytes
from tests.helpers.inprocess import InProcessServer, server_fixture
from tests.helpers.serving import add_model, identity_model, string_model

LIMIT = 256 * 1024  # max_message_bytes of this module's server
READ_TIMEOUT_S = 1.0
INFER = "/v2/models/add/infer"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")  # a + b, FP32 [N, 4]
    string_model(root / "strings" / "1" / "model.onnx")
    from onnx import TensorProto

    identity_model(root / "int8" / "1" / "model.onnx", TensorProto.INT8)
    return root


server = server_fixture(max_message_bytes=LIMIT, http_read_timeout_s=READ_TIMEOUT_S)


def refused(answer: Answer, status: int, *words: str) -> str:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("content-type") == "application/json"
    message = answer.json()["error"]
    assert isinstance(message, str) and "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


def tensor(name: str = "a", shape: Any = (1, 4), datatype: Any = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": list(shape) if isinstance(shape, tuple) else shape, "datatype": datatype,
            **({"data": [1.0, 2.0, 3.0, 4.0]} if "data" not in extra and "parameters" not in extra else {}), **extra}


def good_request() -> dict[str, Any]:
    return {"inputs": [tensor("a"), tensor("b")]}


@pytest.mark.parametrize(("body", "words"), [
    (b'{"inputs": [', ["malformed JSON"]),
    (b"\xff\xfe not text", ["malformed JSON"]),
    (b"", ["malformed JSON"]),  # no body at all
    (b"[" * 100_000, ["nested too deeply"]),
    (b"[1, 2]", ["expected a JSON object"]),
    (b'{"inputs": 3}', ["inputs", "JSON array"]),
    (b'{"inputs": [7]}', ["inputs[0]", "JSON object"]),
])
def test_malformed_json(server: InProcessServer, body: bytes, words: list[str]) -> None:
    refused(call(server.http_port, "POST", INFER, body), 400, *words)


@pytest.mark.parametrize(("request_body", "words"), [
    ({"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, ["inputs[0].name"]),
    ({"inputs": [tensor(datatype=5), tensor("b")]}, ["datatype", "string"]),
    ({"inputs": [tensor(datatype="FP8"), tensor("b")]}, ["unknown datatype 'FP8'"]),
    ({"inputs": [tensor(shape="1,4"), tensor("b")]}, ["shape", "integers"]),
    ({"inputs": [tensor(shape=[1, True, 4]), tensor("b")]}, ["shape", "integers"]),
    ({"inputs": [tensor(data=5), tensor("b")]}, ["data", "JSON array"]),
    ({"inputs": [tensor(data=["1", "2", "3", "4"]), tensor("b")]}, ["strings, not FP32"]),
    ({"inputs": [tensor(data=[True, False, True, False]), tensor("b")]}, ["booleans, not FP32"]),
    ({"inputs": [tensor(data=[1, None, 3, 4]), tensor("b")]}, ["nulls"]),
    ({"inputs": [tensor(datatype="INT32"), tensor("b")]}, ["does not match the model's FP32"]),
    ({"inputs": [tensor(name="c"), tensor("b")]}, ["no such input"]),
    ({"inputs": [tensor("a"), tensor("a"), tensor("b")]}, ["given twice"]),
    ({"inputs": [tensor("a")]}, ["missing input b"]),
    ({"id": 5, "inputs": [tensor("a"), tensor("b")]}, ["id", "string"]),
    ({"parameters": [1], "inputs": [tensor("a"), tensor("b")]}, ["parameters", "JSON object"]),
    ({"parameters": {"x": {"y": 1}}, "inputs": [tensor("a"), tensor("b")]}, ["parameters.x"]),
    ({"parameters": {"binary_data_output": "yes"}, "inputs": [tensor("a"), tensor("b")]}, ["binary_data_output"]),
    ({"parameters": {"timeout": -5}, "inputs": [tensor("a"), tensor("b")]}, ["timeout"]),
    ({"parameters": {"bogus": 1}, "inputs": [tensor("a"), tensor("b")]}, ["unknown request parameter 'bogus'"]),
    ({"inputs": [tensor("a"), tensor("b")], "outputs": [{"name": "nope"}]}, ["no such output"]),
    ({"inputs": [tensor("a"), tensor("b")], "outputs": [{"name": "sum", "parameters": {"binary_data": 1}}]},
     ["binary_data", "boolean"]),
    ({"inputs": [tensor("a"), tensor("b")], "outputs": "sum"}, ["outputs"]),
])
def test_wrong_types_and_fields(server: InProcessServer, request_body: dict[str, Any], words: list[str]) -> None:
    refused(call(server.http_port, "POST", INFER, request_body), 400, *words)


@pytest.mark.parametrize(("data", "shape", "words"), [
    ([1, 2, 3], [1, 4], ["3 values in data, but shape [1, 4] needs 4"]),
    ([1, 2, 3, 4, 5, 6, 7, 8], [1, 4], ["8 values in data"]),
    ([[1, 2], [3]], [1, 4], ["ragged"]),
    ([[[1, 2, 3, 4]]] * 2, [1, 4], ["8 values in data"]),
    ([1, 2, 3, 4], [1, -4], ["does not match the model's"]),
    ([1, 2, 3, 4], [2**40, 4], ["has a dimension above"]),
])
def test_shapes_that_do_not_match_the_data(server: InProcessServer, data: list[Any], shape: list[int],
                                           words: list[str]) -> None:
    body = {"inputs": [tensor("a", shape, data=data), tensor("b")]}
    refused(call(server.http_port, "POST", INFER, body), 400, *words)


def test_integers_are_range_checked_and_floats_not_truncated(server: InProcessServer) -> None:
    for data, words in (([1, 2, 300], ["does not fit in INT8"]), ([1, 2.5, 3], ["floats, not INT8"])):
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT8", "data": data}]}
        refused(call(server.http_port, "POST", "/v2/models/int8/infer", body), 400, *words)


def binary_request(inputs: list[tuple[str, int, bytes | None]], blob: bytes, header_length: int | None = None,
                   extra_headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary tensor data request: each input (name, declared binary_data_size, or None for JSON data)."""
    document = {"inputs": [tensor(name, parameters={"binary_data_size": size}) if raw is None else tensor(name)
                           for name, size, raw in inputs]}
    header = json.dumps(document).encode()
    length = len(header) if header_length is None else header_length
    return header + blob, {"Inference-Header-Content-Length": str(length), **(extra_headers or {})}


FOUR_FLOATS = struct.pack("<4f", 1, 2, 3, 4)


@pytest.mark.parametrize(("inputs", "blob", "header_length", "words"), [
    ([("a", 16, None), ("b", 16, None)], FOUR_FLOATS, None, ["binary_data_size 16 runs past the end"]),
    ([("a", 16, None), ("b", 16, None)], FOUR_FLOATS * 3, None, ["add up to 32 bytes", "carries 48"]),
    ([("a", 12, None), ("b", 20, None)], FOUR_FLOATS * 2, None, ["binary_data_size is 12 bytes", "needs 16"]),
    ([("a", -1, None), ("b", 16, None)], FOUR_FLOATS * 2, None, ["non-negative integer"]),
    ([("a", 16, None), ("b", 16, None)], FOUR_FLOATS * 2, 10**6, ["not within the body"]),
    ([("a", 16, None), ("b", 16, None)], FOUR_FLOATS * 2, 5, ["malformed JSON"]),
])
def test_binary_sizes_that_do_not_add_up(server: InProcessServer, inputs: list[tuple[str, int, bytes | None]],
                                         blob: bytes, header_length: int | None, words: list[str]) -> None:
    body, headers = binary_request(inputs, blob, header_length)
    refused(call(server.http_port, "POST", INFER, body, headers), 400, *words)


def test_binary_data_without_its_header_and_with_data_too(server: InProcessServer) -> None:
    body, _ = binary_request([("a", 16, None), ("b", 16, None)], b"")
    refused(call(server.http_port, "POST", INFER, body), 400, "runs past the end")
    both = {"inputs": [tensor("a", data=[1, 2, 3, 4], parameters={"binary_data_size": 16}), tensor("b")]}
    header = json.dumps(both).encode()
    answer = call(server.http_port, "POST", INFER, header + FOUR_FLOATS,
                  {"Inference-Header-Content-Length": str(len(header))})
    refused(answer, 400, "both 'data' and binary_data_size")
    answer = call(server.http_port, "POST", INFER, header, {"Inference-Header-Content-Length": "twelve"})
    refused(answer, 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize(("raw", "words"), [
    (struct.pack("<I", 100) + b"abc", ["runs past the end"]),
    (struct.pack("<I", 2) + b"\xff\xfe" + struct.pack("<I", 1) + b"a", ["not valid UTF-8"]),
    (struct.pack("<I", 1) + b"a", ["1 BYTES elements, shape needs 2"]),
])
def test_malformed_bytes_tensors(server: InProcessServer, raw: bytes, words: list[str]) -> None:
    document = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(raw)}}]}
    header = json.dumps(document).encode()
    answer = call(server.http_port, "POST", "/v2/models/strings/infer", header + raw,
                  {"Inference-Header-Content-Length": str(len(header))})
    refused(answer, 400, *words)
    document = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 2]}]}
    refused(call(server.http_port, "POST", "/v2/models/strings/infer", document), 400, "JSON strings")


def test_unknown_routes_and_wrong_methods(server: InProcessServer) -> None:
    port = server.http_port
    refused(call(port, "GET", "/"), 404, "no such route")
    refused(call(port, "GET", "/v1/models/add"), 404)
    refused(call(port, "GET", "/v2/models/add/versions/1/bogus"), 404)
    refused(call(port, "GET", "/v2/"), 404)
    refused(call(port, "GET", "/v2/models/no_such_model"), 404, "Request for unknown model: 'no_such_model'")
    answer = call(port, "GET", INFER)
    refused(answer, 405, "not allowed", "POST")
    assert answer.headers["allow"] == "POST"
    answer = call(port, "DELETE", "/v2/health/ready")
    refused(answer, 405)
    assert answer.headers["allow"] == "GET, HEAD"
    head = call(port, "HEAD", "/v2/health/live")
    assert head.status == 200 and head.headers["content-length"] == "13" and head.body == b""


def test_oversized_and_malformed_heads(server: InProcessServer) -> None:
    port = server.http_port
    refused(exchange(port, request_bytes("GET", "/v2/health/live", headers={"X-Big": "x" * 40_000})), 431,
            "exceed 32768 bytes")
    refused(exchange(port, request_bytes("GET", "/v2/" + "m" * 40_000)), 431)
    refused(exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n"), 400, "malformed HTTP")
    refused(exchange(port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"), 400, "malformed HTTP")
    refused(call(port, "GET", "/v2/health/live", headers={"X-Request-ID": "i" * 300}), 400, "X-Request-ID")
    refused(call(port, "POST", INFER, good_request(), {"X-Request-Timeout-Ms": "soon"}), 400,
            "X-Request-Timeout-Ms")


def test_a_body_over_the_limit_is_refused_before_it_is_sent(server: InProcessServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(request_bytes("POST", INFER, headers={"Content-Length": str(LIMIT + 1)}))
        refused(read_answer(sock), 413, f"above the limit of {LIMIT}")  # not one byte of the body was sent
        assert closed_by_peer(sock)


def test_a_chunked_body_over_the_limit_is_cut_off(server: InProcessServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
        sock.sendall(request_bytes("POST", INFER, headers={"Transfer-Encoding": "chunked"}))
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
        answer = None
        for _ in range(2 * LIMIT // len(chunk)):  # sends up to twice the limit, unless answered first
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_answer(sock)
        refused(answer, 413, "over the limit")


def test_compressed_bodies(server: InProcessServer) -> None:
    port = server.http_port
    answer = call(port, "POST", INFER, gzip.compress(json.dumps(good_request()).encode()),
                  {"Content-Encoding": "gzip"})
    assert answer.status == 200 and answer.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    bomb = gzip.compress(b" " * (4 * LIMIT))  # a few KiB that inflate past the limit
    assert len(bomb) < LIMIT // 10
    refused(call(port, "POST", INFER, bomb, {"Content-Encoding": "gzip"}), 413, "inflates to more than")
    refused(call(port, "POST", INFER, b"not gzip at all", {"Content-Encoding": "gzip"}), 400, "does not inflate")
    refused(call(port, "POST", INFER, b"{}", {"Content-Encoding": "br"}), 415, "not supported")


def test_a_slow_body_times_out(server: InProcessServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(request_bytes("POST", INFER, headers={"Content-Length": "100"}) + b'{"inputs": [')
        started = time.monotonic()
        refused(read_answer(sock), 408, "stopped arriving")
        assert time.monotonic() - started < 8  # answered, not left hanging (the timeout is 1 s)


def test_a_slow_head_times_out_and_a_silent_connection_is_closed(server: InProcessServer) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\n")
        refused(read_answer(sock), 408, "request head did not arrive")
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        assert closed_by_peer(sock)  # never sent a byte: closed after the read timeout


def test_bad_deadlines_and_unknown_models_through_the_data_plane(server: InProcessServer) -> None:
    port = server.http_port
    refused(call(port, "POST", "/v2/models/no_such_model/infer", good_request()), 404, "unknown model")
    refused(call(port, "POST", "/v2/models/add/versions/9/infer", good_request()), 404)


def test_the_server_serves_on_after_all_of_it(server: InProcessServer) -> None:
    assert call(server.http_port, "GET", "/v2/health/ready").status == 200
    answer = call(server.http_port, "POST", INFER, good_request())
    assert answer.status == 200 and answer.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert "Traceback" not in server.log()
