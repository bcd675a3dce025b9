"""One of each attack of the adversarial suite, as a coroutine that a soak (scripts/soak.py --adversarial) or a
test can repeat against a running server: what it sends, and the outcomes it may get. Each returns one outcome
word (a gRPC status name, or what a raw HTTP/2 connection saw); anything else in `expected` is a broken promise."""

from __future__ import annotations

import asyncio
import gzip
import io
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from PIL import Image

from tests.helpers.h2raw import (
    HEALTH_WATCH,
    MODEL_INFER,
    MODEL_STREAM_INFER,
    HeaderFlood,
    RawConnection,
    grpc_message,
)

MIB = 1024 * 1024


@dataclass
class Target:
    url: str  # host:port of gRPC
    grpc_port: int
    model: str = "mnist-cnn"


def digits_request(model: str, batch: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[batch, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((batch, 1, 28, 28), np.float32).tobytes())
    return request


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def pixel_bombs(side: int = 6324) -> list[bytes]:
    """Small files of huge images: a grey PNG that is all ink, a 16-bit PNG, a float TIFF (about 50-100 KB each)."""
    grey = Image.new("L", (side, side), 0)
    sixteen = Image.new("I;16", (side, side), 1000)
    floats = Image.new("F", (side // 2, side // 2), 0.5)
    return [encode(grey), encode(sixteen), encode(floats, "TIFF", compression="tiff_adobe_deflate")]


def _status(error: grpc.aio.AioRpcError) -> str:
    return str(error.code().name)


async def _call(call: Awaitable[object]) -> str:
    try:
        await call
        return "OK"
    except grpc.aio.AioRpcError as error:
        return _status(error)


class Attacks:
    """The attacks, sharing one channel for those spoken through gRPC and one set of prepared payloads."""

    def __init__(self, target: Target, channel: grpc.aio.Channel) -> None:
        self.target = target
        self.v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        self.classifier = classify_pb2_grpc.ImageClassifierStub(channel)
        self.bombs = pixel_bombs()
        self.rng = random.Random(7)
        request = digits_request(target.model, max(1, 60 * MIB // (28 * 28 * 4)))
        self.gzip_bomb = grpc_message(gzip.compress(request.SerializeToString()), compressed=True)
        self.one_request = grpc_message(digits_request(target.model).SerializeToString())

    def table(self) -> dict[str, tuple[Callable[[], Awaitable[str]], frozenset[str]]]:
        """name -> (the attack, the outcomes it may get)."""
        refused = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"})
        return {
            "pixel bombs": (self.pixel_bombs, refused),
            "gzip bomb": (self.gzip, frozenset({"RESOURCE_EXHAUSTED"})),
            "unfinished message": (self.unfinished, frozenset({"HELD", "DEADLINE_EXCEEDED", "CLOSED"})),
            "header flood": (self.header_flood, frozenset({"GOAWAY", "CLOSED", "RST_STREAM(11)", "RST_STREAM(2)",
                                                           "INTERNAL", "RESOURCE_EXHAUSTED"})),
            "stream never read": (self.stream_never_read, frozenset({"PAUSED"})),
            "stalled health watch": (self.stalled_watch, frozenset({"HELD"})),
            "duplicated outputs": (self.duplicated_outputs, frozenset({"INVALID_ARGUMENT"})),
            "unknown model": (self.unknown_model, frozenset({"NOT_FOUND"})),
            "cancelled call": (self.cancelled, frozenset({"CANCELLED", "OK"})),
            "bad shape": (self.bad_shape, frozenset({"INVALID_ARGUMENT"})),
        }

    async def pixel_bombs(self) -> str:
        images = [classify_pb2.Image(encoded=self.rng.choice(self.bombs)) for _ in range(self.rng.randint(1, 4))]
        request = classify_pb2.ClassifyRequest(model_name=self.target.model, images=images)
        return await _call(self.classifier.Classify(request, timeout=60))

    async def gzip(self) -> str:
        connection = await RawConnection.open(self.target.grpc_port)
        try:
            stream = await connection.start(MODEL_INFER, gzip_encoded=True)
            await connection.send(stream, self.gzip_bomb, end_stream=True)
            return (await connection.outcome(stream, timeout=30)).status
        finally:
            await connection.close()

    async def unfinished(self) -> str:
        """Half of a message, then nothing for 3 s."""
        connection = await RawConnection.open(self.target.grpc_port)
        try:
            stream = await connection.start(MODEL_INFER)
            declared = grpc_message(b"\0" * (MIB + MIB // 2))
            await connection.send(stream, declared[:len(declared) // 2], stall_s=2.0)
            await asyncio.sleep(3)
            outcome = connection.outcomes[stream]
            return outcome.status if outcome.done else "HELD"
        finally:
            await connection.close()

    async def header_flood(self) -> str:
        return await HeaderFlood().run(self.target.grpc_port, acknowledge=self.rng.random() < 0.5,
                                       limit_bytes=32 * MIB)

    async def stream_never_read(self) -> str:
        connection = await RawConnection.open(self.target.grpc_port, read=False)
        try:
            stream = await connection.start(MODEL_STREAM_INFER)
            sent = 0
            while sent < 50_000 * len(self.one_request):
                chunk = await connection.send(stream, self.one_request * 500, stall_s=1.0)
                sent += chunk
                if chunk < len(self.one_request) * 500:
                    break  # the server stopped reading: the windows stay shut
            return "PAUSED" if not connection.outcomes[stream].done else connection.outcomes[stream].status
        finally:
            await connection.close()

    async def stalled_watch(self) -> str:
        connection = await RawConnection.open(self.target.grpc_port, read=False, window=0)
        try:
            stream = await connection.start(HEALTH_WATCH)
            await connection.send(stream, grpc_message(b""), end_stream=True)  # service "" (an empty message)
            await asyncio.sleep(3)
            outcome = connection.outcomes[stream]
            return outcome.status if outcome.done else "HELD"
        finally:
            await connection.close()

    async def duplicated_outputs(self) -> str:
        request = digits_request(self.target.model)
        for _ in range(10_000):
            request.outputs.add(name="probabilities")
        return await _call(self.v2.ModelInfer(request, timeout=10))

    async def unknown_model(self) -> str:
        request = digits_request(f"no-such-model-{self.rng.randrange(10**9)}")
        return await _call(self.v2.ModelInfer(request, timeout=10))

    async def cancelled(self) -> str:
        call = self.v2.ModelInfer(digits_request(self.target.model, 64), timeout=10)
        await asyncio.sleep(self.rng.random() * 0.002)
        call.cancel()
        try:
            await call
            return "OK"
        except asyncio.CancelledError:
            return "CANCELLED"
        except grpc.aio.AioRpcError as error:
            return _status(error)

    async def bad_shape(self) -> str:
        request = digits_request(self.target.model)
        request.inputs[0].shape[-1] = 29
        return await _call(self.v2.ModelInfer(request, timeout=10))
