"""Overload against a real server: beyond the queue bound requests are refused at once with
RESOURCE_EXHAUSTED, expired deadlines are answered DEADLINE_EXCEEDED without running, and after a burst of
ten times capacity the server is back to normal: empty queue, nothing in flight, memory flat."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc

from tests.helpers.metrics import value
from tests.helpers.serving import ServerProcess, running_server, slow_model

RUN_MS = 20
QUEUE = 8
CAPACITY = 1 + QUEUE  # one running, QUEUE waiting


def request(i: int = 0) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="slow", id=f"r{i}")
    message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    message.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    return message


async def fire(url: str, count: int, timeout: float | None = None) -> list[tuple[str, float]]:
    """Sends `count` requests at once; returns (status name, seconds to answer) per request."""
    async with grpc.aio.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(i: int) -> tuple[str, float]:
            start = time.perf_counter()
            try:
                await stub.ModelInfer(request(i), timeout=timeout)
                return "OK", time.perf_counter() - start
            except grpc.aio.AioRpcError as error:
                return error.code().name, time.perf_counter() - start

        return await asyncio.gather(*(one(i) for i in range(count)))


def rss_kib(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("overload")
    slow_model(root / "slow" / "1" / "model.onnx", milliseconds=RUN_MS)
    (root / "slow" / "config.yaml").write_text(
        f"max_batch_size: 1\ndynamic_batching: {{max_queue_size: {QUEUE}}}\n")
    with running_server(root) as running:
        yield running


def test_burst_beyond_the_queue_is_refused_fast(server: ServerProcess) -> None:
    outcomes = asyncio.run(fire(server.url, 10 * CAPACITY))
    codes = Counter(code for code, _ in outcomes)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= CAPACITY
    slowest_refusal = max(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
    slowest_success = max(t for code, t in outcomes if code == "OK")
    assert slowest_refusal < slowest_success  # refused at once, not after waiting in line


def test_expired_requests_never_run(server: ServerProcess) -> None:
    before = value(server.scrape(), "onnx_serve_inferences_total", model="slow")
    # Capacity is 9 requests of ~RUN_MS each; with a deadline of ~3 runs, the tail of the queue expires.
    outcomes = asyncio.run(fire(server.url, CAPACITY, timeout=3 * RUN_MS / 1000))
    codes = Counter(code for code, _ in outcomes)
    assert codes["DEADLINE_EXCEEDED"] >= 1, codes
    time.sleep(CAPACITY * RUN_MS / 1000 + 0.5)
    ran = value(server.scrape(), "onnx_serve_inferences_total", model="slow") - before
    assert ran < CAPACITY, "expired requests must be dropped before inference"
    assert ran >= codes["OK"]


def test_server_recovers_after_a_burst_and_memory_stays_flat(server: ServerProcess) -> None:
    asyncio.run(fire(server.url, 10 * CAPACITY))  # warm up allocations
    baseline = rss_kib(server)
    for _ in range(5):
        asyncio.run(fire(server.url, 10 * CAPACITY))
    time.sleep(0.5)
    text = server.scrape()
    assert value(text, "onnx_serve_queue_depth", model="slow") == 0
    assert value(text, "onnx_serve_inflight_requests") == 0
    assert [code for code, _ in asyncio.run(fire(server.url, 1))] == ["OK"]
    assert rss_kib(server) - baseline < 10 * 1024
