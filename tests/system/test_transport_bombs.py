"""Transport bombs (hardening issue #11 §4): what a gRPC client can make the server hold in memory, against a real
`onnx-serve serve` process with its default settings and the bundled model. The attacks are raw HTTP/2 (h2 and
hand-made frames), as no gRPC library sends them: gzip messages that expand a thousandfold, messages that never
finish on many connections, header blocks that never end (HEADERS + endless CONTINUATION, before and after
acknowledging the server's SETTINGS) on 100 connections, and a ModelStreamInfer stream that sends and never reads.
Each test resets the server's peak RSS (VmHWM), attacks, and checks that the peak stayed under half of the pod's
1 GiB, that the attacker got a clear answer, and that a normal ModelInfer was served during and after the attack.
What each bound is and why is in service/onnx_serve/edges/grpc/transport.py."""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from onnx_serve.client.client import Client, ClientError
from onnx_serve.core.settings import Settings
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from PIL import Image

from tests.helpers.h2raw import (
    CONTINUATION,
    END_HEADERS,
    HEADERS,
    MODEL_INFER,
    MODEL_STREAM_INFER,
    HeaderFlood,
    Outcome,
    RawConnection,
    frame,
    grpc_message,
)
from tests.helpers.serving import BUNDLED_MODELS, ServerProcess, running_server

MIB = 1024 * 1024
RSS_CEILING_KIB = 512 * 1024  # half of the pod's 1 GiB
DEFAULTS = Settings()
Infer = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(BUNDLED_MODELS, "--execution-providers", "cpu") as running:
        yield running


def peak_rss_kib(server: ServerProcess, reset: bool = False) -> int:
    """The server's peak RSS (VmHWM); `reset` first sets it back to the current RSS (Linux: 5 > clear_refs)."""
    if reset:
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def digits_request(batch: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist-cnn")
    request.inputs.add(name="input", datatype="FP32", shape=[batch, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((batch, 1, 28, 28), np.float32).tobytes())
    return request


@functools.cache
def serialized_request(size: int) -> bytes:
    """A well-formed ModelInferRequest of about `size` bytes: so many digits that the model refuses the batch, after
    the server has received and parsed all of it."""
    return digits_request(max(1, (size - 200) // (28 * 28 * 4))).SerializeToString()


@asynccontextmanager
async def normal_client(server: ServerProcess) -> AsyncIterator[Infer]:
    """A well-behaved client, connected before the attack as long-lived clients are: infer() sends a batch of 64
    digits and checks the answer."""
    async with grpc.aio.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def infer() -> None:
            response = await stub.ModelInfer(digits_request(64), timeout=20, wait_for_ready=True)
            assert list(response.outputs[0].shape) == [64, 10]

        await infer()
        yield infer


# ---------------------------------------------------------------------------------------------- the attacks

@pytest.mark.parametrize(("bombs", "expands_to", "refused_as"), [
    (1, 60 * MIB, "RESOURCE_EXHAUSTED"),
    (32, 60 * MIB, "RESOURCE_EXHAUSTED"),
    (32, DEFAULTS.max_message_bytes - 4096, "INVALID_ARGUMENT"),  # small enough to be parsed, then refused
], ids=["one-to-60MiB", "32-to-60MiB", "32-to-just-under-the-limit"])
async def test_gzip_bombs_are_bounded_by_the_message_limit_after_decompression(
        server: ServerProcess, bombs: int, expands_to: int, refused_as: str) -> None:
    bomb = grpc_message(gzip.compress(serialized_request(expands_to)), compressed=True)
    assert len(bomb) < expands_to // 500
    async with normal_client(server) as infer:
        peak_rss_kib(server, reset=True)
        connections = [await RawConnection.open(server.grpc_port) for _ in range(min(bombs, 8))]

        async def explode(i: int) -> Outcome:
            connection = connections[i % len(connections)]
            stream = await connection.start(MODEL_INFER, gzip_encoded=True)
            await connection.send(stream, bomb, end_stream=True)
            return await connection.outcome(stream)

        during = asyncio.create_task(infer())
        outcomes = await asyncio.gather(*(explode(i) for i in range(bombs)))
        await during
        peak = peak_rss_kib(server)
        await infer()
        for connection in connections:
            await connection.close()
    assert {outcome.status for outcome in outcomes} == {refused_as}, [o.headers for o in outcomes]
    if refused_as == "RESOURCE_EXHAUSTED":  # grpc refuses it by its size once decompressed (words vary by version)
        assert all("larger than max" in o.headers["grpc-message"] for o in outcomes), [o.headers for o in outcomes]
    assert peak < RSS_CEILING_KIB, f"peak RSS {peak // 1024} MiB"


async def test_messages_that_never_finish_on_20_connections_are_bounded(server: ServerProcess) -> None:
    unfinished = grpc_message(serialized_request(DEFAULTS.max_message_bytes - 1024))[:-1]  # all but its last byte
    async with normal_client(server) as infer:
        peak_rss_kib(server, reset=True)
        connections = [await RawConnection.open(server.grpc_port) for _ in range(20)]
        streams = [await connection.start(MODEL_INFER) for connection in connections]
        pairs = list(zip(connections, streams, strict=True))
        sent = await asyncio.gather(*(c.send(s, unfinished, stall_s=2) for c, s in pairs))
        await infer()  # while the server holds every message it accepted
        held = sum(n == len(unfinished) and not c.closed for c, n in zip(connections, sent, strict=True))
        refused = sum(c.closed for c in connections)
        peak = peak_rss_kib(server)
        for connection in connections:
            await connection.close()
        await infer()
    # The normal client holds one of the --max-grpc-connections; connections beyond them are closed at once.
    assert held + refused == 20 and 0 < held < DEFAULTS.max_grpc_connections, (held, refused)
    assert peak < RSS_CEILING_KIB, f"peak RSS {peak // 1024} MiB"


async def test_unfinished_requests_beyond_the_rpc_limit_are_refused_and_the_rest_time_out() -> None:
    with running_server(BUNDLED_MODELS, "--execution-providers", "cpu", "--grpc-read-timeout", "1") as server:
        connections = [await RawConnection.open(server.grpc_port) for _ in range(2)]
        calls = [(c, await c.start(MODEL_INFER)) for _ in range(DEFAULTS.max_concurrent_rpcs // 2 + 2)
                 for c in connections]
        for connection, stream in calls:
            await connection.send(stream, grpc_message(serialized_request(64 * 1024))[:32 * 1024])
        outcomes = [await connection.outcome(stream) for connection, stream in calls]
        # A connection that never acknowledges the server's SETTINGS, in the middle of a header block.
        silent = await HeaderFlood().run(server.grpc_port, acknowledge=False, limit_bytes=0)
        async with normal_client(server) as infer:
            await infer()
        for connection in connections:
            await connection.close()
    messages = {o.status: o.headers["grpc-message"] for o in outcomes}
    assert messages == {"RESOURCE_EXHAUSTED": "Concurrent RPC limit exceeded!",
                        "DEADLINE_EXCEEDED": "request message not received within 1 s (--grpc-read-timeout)"}
    assert sum(o.status == "DEADLINE_EXCEEDED" for o in outcomes) <= DEFAULTS.max_concurrent_rpcs
    assert silent in ("GOAWAY", "CLOSED")  # closed by the settings timeout (--grpc-read-timeout too)


@pytest.mark.parametrize("acknowledge", [False, True], ids=["before-acknowledging-settings", "after"])
async def test_header_floods_on_100_connections_are_bounded(server: ServerProcess, acknowledge: bool) -> None:
    async with normal_client(server) as infer:
        peak_rss_kib(server, reset=True)
        floods = [asyncio.create_task(HeaderFlood().run(server.grpc_port, acknowledge, 20 * MIB)) for _ in range(100)]
        await asyncio.sleep(0.2)
        await infer()
        outcomes = await asyncio.gather(*floods)
        peak = peak_rss_kib(server)
        await infer()
    # Accepted connections get their stream refused (RESOURCE_EXHAUSTED at the header limit: 16 MiB before the
    # settings are acknowledged, 16 KiB after); those beyond --max-grpc-connections are closed at once.
    refused = [outcome for outcome in outcomes if outcome != "CLOSED"]
    assert set(refused) <= {"RESOURCE_EXHAUSTED", "RST_STREAM(0)"}, set(outcomes)
    assert 0 < len(refused) < DEFAULTS.max_grpc_connections
    assert peak < RSS_CEILING_KIB, f"peak RSS {peak // 1024} MiB"


async def test_header_blocks_completed_before_acknowledging_settings_are_refused_at_once(server: ServerProcess) -> None:
    flood = HeaderFlood()
    async with normal_client(server) as infer:
        peak_rss_kib(server, reset=True)
        writer, reading = await flood.connect(server.grpc_port, acknowledge=False)
        streams = range(1, 17, 2)
        for stream_id in streams:  # 2 MiB of headers each (grpc would accept up to 16 MiB before the ACK)
            writer.write(frame(HEADERS, 0, stream_id, flood.BLOCK))
            for i in range(128):
                writer.write(frame(CONTINUATION, END_HEADERS if i == 127 else 0, stream_id, flood.PADDING))
            await writer.drain()
        async with asyncio.timeout(20):
            while len(flood.statuses) < len(streams) and not reading.done():
                await asyncio.sleep(0.05)
        await infer()
        peak = peak_rss_kib(server)
        reading.cancel()
        writer.close()
    # grpc refuses some at random (its soft limit), our interceptor the rest, before they hold a call slot.
    assert {status for status, _ in flood.statuses.values()} == {"RESOURCE_EXHAUSTED"}, flood.statuses
    assert any(message.startswith("request metadata is") for _, message in flood.statuses.values()), flood.statuses
    assert peak < RSS_CEILING_KIB, f"peak RSS {peak // 1024} MiB"


async def test_a_stream_that_is_never_read_stops_being_read(server: ServerProcess) -> None:
    request = grpc_message(digits_request(1).SerializeToString())
    async with normal_client(server) as infer:
        peak_rss_kib(server, reset=True)
        connection = await RawConnection.open(server.grpc_port, read=False)
        stream = await connection.start(MODEL_STREAM_INFER)
        accepted = 0
        while accepted < 200_000:
            sent = await connection.send(stream, request * 500, stall_s=1.0)
            accepted += sent // len(request)
            if sent < len(request) * 500:
                break  # the windows stayed shut: the server stopped reading
        await infer()
        peak = peak_rss_kib(server)
        paused = not connection.outcomes[stream].done
        await connection.close()
        await infer()
    # 256 answers in flight, 64 KiB of answers in grpc's write buffer, a 64 KiB window: about 1,000 requests.
    assert paused and accepted < 3_000, accepted
    assert peak < RSS_CEILING_KIB, f"peak RSS {peak // 1024} MiB"


def noise_png(size_bytes: int) -> bytes:
    """A photo-sized PNG that does not compress (random pixels)."""
    side = int((size_bytes / 3) ** 0.5)
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def test_normal_clients_fit_the_defaults(server: ServerProcess) -> None:
    batch = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    with triton.InferenceServerClient(server.url) as client:
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        assert client.infer("mnist-cnn", [tensor]).as_numpy("probabilities").shape == (64, 10)
    digits = list((batch[:, 0] * 255).astype(np.uint8))
    photo, too_big = noise_png(MIB), noise_png(DEFAULTS.max_message_bytes + MIB)
    with Client(server.url, timeout=30) as client:
        assert len(client.classify(digits)) == 64
        [top] = client.classify(photo)
        assert top
        with pytest.raises(ClientError) as refused:
            client.classify(too_big)
    assert refused.value.code == "RESOURCE_EXHAUSTED" and "larger than max" in refused.value.message
