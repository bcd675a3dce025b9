"""The gRPC transport's limits: what grpc core is told about message sizes, ports, connection ages and streams,
so that what a client can make the server hold is bounded by settings."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from onnx_serve.core.settings import Settings


def grpc_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # grpc turns SO_REUSEPORT on by default, which lets a second server silently share a busy port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)))
    if settings.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", settings.max_concurrent_streams))
    return options


def make_server(settings: Settings, reuse_port: bool,
                interceptors: Sequence[grpc.aio.ServerInterceptor]) -> grpc.aio.Server:
    """The grpc.aio server with the transport limits of `settings`, not yet bound."""
    return grpc.aio.server(options=grpc_options(settings, reuse_port), interceptors=interceptors)
