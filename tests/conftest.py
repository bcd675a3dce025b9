"""Shared fixtures: raw gRPC stubs on our own protobuf stubs (tritonclient validates some things client-side,
so bad requests go through these)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc

V2Stub = pb_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def v2_stub_for() -> Iterator[Callable[[str], V2Stub]]:
    """v2_stub_for("127.0.0.1:PORT") -> a GRPCInferenceServiceStub on a plaintext channel closed at module end."""
    channels: list[grpc.Channel] = []

    def open_stub(url: str) -> V2Stub:
        channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        channels.append(channel)
        return V2Stub(channel)

    yield open_stub
    for channel in channels:
        channel.close()
