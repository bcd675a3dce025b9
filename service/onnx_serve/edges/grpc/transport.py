"""The gRPC transport's limits: what grpc core is told about message sizes, connections, streams and timeouts, and
the interceptor that bounds how long a request may take to arrive, so that what a client can make the server hold
is bounded by settings.

What a client can make the server hold with the defaults (the pod gets 1 GiB; the ceiling is half of it; the
server holds about 100 MiB before any request; tests/system/test_transport_bombs.py attacks each bound):

- messages: every call in progress (at most --max-concurrent-rpcs = 128; RESOURCE_EXHAUSTED beyond) holds at most
  one message of at most --max-message-bytes = 2 MiB, a size grpc checks after decompression (a gzip bomb is
  RESOURCE_EXHAUSTED once it has expanded past it): 128 x 2 MiB = 256 MiB. A unary request whose message has not
  arrived --grpc-read-timeout = 10 s after its headers is ended DEADLINE_EXCEEDED, which frees what it held and
  its slot: grpc itself would wait for ever (only a client's own deadline ends it).
- header blocks: until a new connection acknowledges our HTTP/2 SETTINGS, grpc core accepts header blocks of up to
  16 MiB from it (the protocol's default header list size; grpc's 16 KiB limit applies only once acknowledged),
  so a HEADERS + CONTINUATION flood holds up to 16 MiB per connection: at most --max-grpc-connections = 16 (a
  connection beyond it is closed at once) x 16 MiB = 256 MiB, for at most --grpc-read-timeout (a connection that
  has not acknowledged our settings by then is closed). A header block it completes is refused at once (below).
- stream windows: without BDP probing the window grpc grants a stream that is not being read stays at 64 KiB
  (BDP grows it to megabytes), and a stream's unsent answers are held to grpc's 64 KiB write buffer:
  128 calls x (64 + 64) KiB = 16 MiB; a stream's answers in flight are bounded by common.answer_concurrently.

Each family alone: 256 MiB at most. All at once, at their worst together: 256 + 256 + 16 = 528 MiB, which would pass
the ceiling; the adversarial soak, every family mixed for 10 minutes, peaks at 377 MiB (docs/reliability.md).
128 calls in progress is what a benchmark's 4 connections x 32 streams needs (64 refused a quarter of them).
Connections without calls are
closed after --max-connection-idle (departed clients give their connection slot back); on those with calls, a
peer that does not answer a keepalive ping (every --keepalive-time) within 20 s is disconnected.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc

from onnx_serve.core.settings import Settings

STREAM_WINDOW_BYTES = 64 * 1024  # grpc's own initial stream window, kept fixed (no BDP growth)
# The metadata a request may carry: grpc's own (default) hard limit once a connection has acknowledged our
# settings; a request that arrived before (with up to 16 MiB of headers) is refused at once, not held while it runs.
MAX_METADATA_BYTES = 16 * 1024


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def grpc_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # grpc turns SO_REUSEPORT on by default, which lets a second server silently share a busy port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # BDP probing grows every stream's receive window to what the link could carry (megabytes), which is
        # what a stream that is not being read can make us buffer; a fixed window bounds it.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
    ]
    if settings.max_grpc_connections > 0:
        options.append(("grpc.max_allowed_incoming_connections", settings.max_grpc_connections))
    if settings.grpc_read_timeout_s > 0:
        options.append(("grpc.http2.settings_timeout", _ms(settings.grpc_read_timeout_s)))
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle_s)))
    if settings.keepalive_time_s > 0:
        options.append(("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)))
        # grpc stops pinging after 2 pings without data by default: a quiet stream's peer would go unwatched.
        options.append(("grpc.http2.max_pings_without_data", 0))
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)))
    if settings.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", settings.max_concurrent_streams))
    return options


def make_server(settings: Settings, reuse_port: bool,
                interceptors: Sequence[grpc.aio.ServerInterceptor]) -> grpc.aio.Server:
    """The grpc.aio server with the transport limits of `settings`, not yet bound."""
    limits = RequestLimits(settings.grpc_read_timeout_s)
    return grpc.aio.server(options=grpc_options(settings, reuse_port), interceptors=[limits, *interceptors],
                           maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None)


class RequestLimits(grpc.aio.ServerInterceptor):
    """Refuses requests with oversized metadata at once, and gives a unary request `read_timeout_s` to deliver
    its message. grpc reads a unary request's message before any handler runs and has no timeout of its own for
    it (only the client's deadline), so each unary-request handler is served as a streaming-request one that
    reads the single message itself, under the timeout; a request that misses it is ended DEADLINE_EXCEEDED,
    which makes grpc drop what it had received. Stream requests are left alone: a stream may rightly be quiet."""

    def __init__(self, read_timeout_s: float) -> None:
        self.read_timeout_s = read_timeout_s

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata_bytes = sum(len(key) + len(value) for key, value in handler_call_details.invocation_metadata or ())
        if metadata_bytes > MAX_METADATA_BYTES:
            return _refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"request metadata is {metadata_bytes} bytes, above the limit of {MAX_METADATA_BYTES}")
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or self.read_timeout_s <= 0:
            return handler
        return _with_read_timeout(handler, self.read_timeout_s)


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that ends the RPC with `code` without reading its request (streaming-request, so grpc does not
    read a message first)."""

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _with_read_timeout(handler: grpc.RpcMethodHandler, timeout_s: float) -> grpc.RpcMethodHandler:
    behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler  # a synchronous handler runs in grpc's thread pool; none of ours is

    async def read_one(context: grpc.aio.ServicerContext) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                request = await context.read()
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"request message not received within {timeout_s:g} s (--grpc-read-timeout)")
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request has no message")
        return request

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if not handler.response_streaming:
        async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await cast(Awaitable[Any], behavior(await read_one(context), context))

        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)

    async def streaming(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        answers = behavior(await read_one(context), context)
        if inspect.isasyncgen(answers):
            async for answer in answers:
                yield answer
        else:
            await cast(Awaitable[None], answers)  # a handler that writes with context.write()

    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
