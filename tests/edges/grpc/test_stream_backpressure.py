"""Backpressure on the bidirectional streams (hardening issue): a client that sends and never reads must not
grow the server. Every pending answer of a stream, computing or waiting to be written, holds one of the
stream's STREAM_MAX_INFLIGHT slots until grpc has taken its response, so once the transport's flow-control
window is full the server stops reading the stream. Unit tests of answer_concurrently, then both streams of
a live in-process server with a client that writes thousands of requests and reads none."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, cast

import grpc
import numpy as np
import pytest
from onnx_serve.core.errors import InvalidArgument, ServeError
from onnx_serve.edges.grpc import classify, inference
from onnx_serve.edges.grpc.common import answer_concurrently
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from PIL import Image

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, in_process_server
from tests.helpers.metrics import value
from tests.helpers.serving import add_model, conv_classifier_model

MAX_INFLIGHT = 8


async def numbers(count: int) -> AsyncIterator[int]:
    for i in range(count):
        yield i


class Answers:
    """An `answer` that counts its calls, answering at once (or failing on odd numbers, if asked)."""

    def __init__(self, fail_odd: bool = False) -> None:
        self.calls = 0
        self.fail_odd = fail_odd

    async def __call__(self, request: int) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail_odd and request % 2:
            raise InvalidArgument(f"odd {request}")
        return f"ok {request}"


def failed(request: int, error: ServeError) -> str:
    return f"failed {request}: {error}"


async def settle() -> None:
    """Lets every task that can run, run (the reader, the answers)."""
    for _ in range(50):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("taken", [1, 2, 10])
async def test_a_consumer_that_stops_reading_stops_the_answers(taken: int) -> None:
    answer = Answers()
    stream = cast(AsyncGenerator[str, None], answer_concurrently(numbers(1000), answer, failed, MAX_INFLIGHT))
    for _ in range(taken):
        await anext(stream)
    await settle()
    # (the slot of the last response taken is released when the consumer comes back for the next)
    assert answer.calls <= MAX_INFLIGHT + taken, f"{answer.calls} answers started for {taken} taken"
    await stream.aclose()


async def test_pending_answers_never_exceed_the_limit_and_all_are_answered() -> None:
    answer = Answers(fail_odd=True)
    responses: list[str] = []
    async for response in answer_concurrently(numbers(300), answer, failed, MAX_INFLIGHT):
        assert answer.calls - len(responses) <= MAX_INFLIGHT
        responses.append(response)
        if len(responses) % 7 == 0:
            await settle()  # a slow reader
    assert len(responses) == 300 == answer.calls
    assert sorted(responses) == sorted([f"ok {i}" for i in range(0, 300, 2)] +
                                       [f"failed {i}: odd {i}" for i in range(1, 300, 2)])


async def test_an_answer_that_raises_frees_its_slot_and_ends_the_stream_with_the_error() -> None:
    async def broken(request: int) -> str:
        raise RuntimeError(f"bug {request}")

    with pytest.raises(RuntimeError, match="bug"):
        async for _ in answer_concurrently(numbers(3 * MAX_INFLIGHT), broken, failed, MAX_INFLIGHT):
            pass


# ------------------------------------------------------------------------------------------ live server

# The client announces a small, fixed receive window, so what the transport holds is a few dozen responses.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
WRITES = 3000  # well above either limit (256, 64) plus what the window holds
TRANSPORT_SLACK = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")
    conv_classifier_model(root / "conv" / "1" / "model.onnx", classes=3, size=8)
    (root / "conv" / "config.yaml").write_text(
        "max_batch_size: 8\npreprocess: {color_mode: L, resize: exact, width: 8, height: 8, invert: false}\n")
    with in_process_server(root, execution_providers=CPU_ONLY) as running:
        yield running


def infer_request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add", id=str(i))
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), 255).save(out, "PNG")
    return out.getvalue()


async def answered_while_not_reading(server: InProcessServer, api: str, open_stream: Callable[[grpc.aio.Channel], Any],
                                     request: Callable[[int], Any]) -> tuple[int, float]:
    """Writes WRITES requests on a stream whose responses are never read (stopping early if the server stops
    taking them), waits for the server's request count to settle, and returns (writes, answers started)."""
    before = value(server.scrape(), "onnx_serve_requests_total", api=api)
    async with grpc.aio.insecure_channel(server.url, options=SMALL_WINDOW) as channel:
        call = open_stream(channel)
        written = 0
        for i in range(WRITES):
            try:
                await asyncio.wait_for(call.write(request(i)), 1.0)
            except TimeoutError:
                break  # the server stopped reading: backpressure reached the client
            written += 1
        answered, deadline = -1.0, time.monotonic() + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = value(server.scrape(), "onnx_serve_requests_total", api=api) - before
            if now == answered:
                break
            answered = now
        call.cancel()
    return written, answered


async def test_a_model_stream_infer_client_that_never_reads_is_not_answered_without_bound(
        server: InProcessServer) -> None:
    written, answered = await answered_while_not_reading(
        server, "stream", lambda channel: pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(),
        infer_request)
    assert written > inference.STREAM_MAX_INFLIGHT + TRANSPORT_SLACK  # the client did outrun the limit
    assert 0 < answered <= inference.STREAM_MAX_INFLIGHT + TRANSPORT_SLACK, (written, answered)


async def test_a_classify_stream_client_that_never_reads_is_not_answered_without_bound(
        server: InProcessServer) -> None:
    image = png()
    written, answered = await answered_while_not_reading(
        server, "classify", lambda channel: classify_pb2_grpc.ImageClassifierStub(channel).ClassifyStream(),
        lambda i: classify_pb2.ClassifyRequest(model_name="conv", id=str(i),
                                               images=[classify_pb2.Image(encoded=image)]))
    assert written > classify.STREAM_MAX_INFLIGHT + TRANSPORT_SLACK
    assert 0 < answered <= classify.STREAM_MAX_INFLIGHT + TRANSPORT_SLACK, (written, answered)
