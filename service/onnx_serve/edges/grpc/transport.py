"""The gRPC transport's limits: what grpc core is told about message sizes, connections, streams and timeouts, and
the handler registration that bounds request metadata and how long a request may take to arrive, so that what a
client can make the server hold is bounded by settings.

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
from collections.abc import AsyncIterator, Awaitable, Sequence
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
    """The grpc.aio server with the transport limits of `settings`, not yet bound. Register services on
    `LimitedRegistry(server, settings)`, which gives each handler the request limits."""
    return grpc.aio.server(options=grpc_options(settings, reuse_port), interceptors=list(interceptors) or None,
                           maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None)


class LimitedRegistry:
    """Stands in for the server where the generated `add_*Servicer_to_server` functions register handlers,
    and registers each with the request limits built in: request metadata above MAX_METADATA_BYTES is refused
    at once, and a unary request gets `grpc_read_timeout_s` to deliver its message.

    grpc reads a unary request's message before any handler runs and has no timeout of its own for it (only the
    client's deadline), so each unary-request handler is registered as a streaming-request one that reads the
    single message itself, under the timeout; a request that misses it is ended DEADLINE_EXCEEDED, which makes
    grpc drop what it had received. Stream requests get no read timeout: a stream may rightly be quiet.
    The limits are applied once, at registration, rather than by an interceptor on every call: an interceptor
    runs an extra coroutine per call (4-7% of the server's CPU per ModelInfer in interleaved h2load runs,
    docs/benchmarks-analysis.md)."""

    def __init__(self, server: grpc.aio.Server, settings: Settings) -> None:
        self.server = server
        self.reads = ReadDeadlines(settings.grpc_read_timeout_s)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_LimitedGenericHandler(h, self.reads) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.server.add_registered_method_handlers(
            service, {name: limited(handler, self.reads) for name, handler in handlers.items()})


class _LimitedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers carry the limits, wrapped once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, reads: ReadDeadlines) -> None:
        self.inner, self.reads = inner, reads
        self.wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in self.wrapped:
            handler = self.inner.service(handler_call_details)
            if handler is None:
                return None  # not cached: an unknown method name is the client's, unbounded
            self.wrapped[method] = limited(handler, self.reads)
        return self.wrapped[method]


class ReadDeadlines:
    """Reads a unary request's single message under a timeout. One sweeper task ends the reads that are over
    time, instead of a timer per request (asyncio.timeout cost about 50 us per call on the benchmark machine):
    a read that began more than `timeout_s` ago is cancelled at the next sweep, so it ends after between 1 and
    1.25 x the timeout."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting: dict[asyncio.Task[Any], float] = {}  # reading task -> when its read began (loop time)
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, context: grpc.aio.ServicerContext) -> Any:
        if self.timeout_s <= 0:
            request = await context.read()
        else:
            task = asyncio.current_task()
            assert task is not None
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="grpc-read-deadlines")
            self._waiting[task] = asyncio.get_running_loop().time()
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                self._expired.discard(task)
                task.uncancel()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"request message not received within "
                                    f"{self.timeout_s:g} s (--grpc-read-timeout)")
            finally:
                self._waiting.pop(task, None)
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request has no message")
        return request

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            began_before = loop.time() - self.timeout_s
            for task, began in list(self._waiting.items()):
                if began <= began_before:
                    del self._waiting[task]
                    self._expired.add(task)
                    task.cancel()


def metadata_refusal(context: grpc.aio.ServicerContext) -> str | None:
    """Why the call's metadata is refused (a request that arrived before the connection acknowledged our
    settings may carry up to 16 MiB of it), or None."""
    size = sum(len(key) + len(value) for key, value in context.invocation_metadata() or ())
    if size > MAX_METADATA_BYTES:
        return f"request metadata is {size} bytes, above the limit of {MAX_METADATA_BYTES}"
    return None


def limited(handler: grpc.RpcMethodHandler, reads: ReadDeadlines) -> grpc.RpcMethodHandler:
    """`handler` with the metadata limit and, for a unary request, the read timeout."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming:
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler  # a synchronous handler runs in grpc's thread pool; none of ours is

    async def message(context: grpc.aio.ServicerContext) -> Any:
        if (refusal := metadata_refusal(context)) is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        return await reads.read(context)

    if handler.request_streaming and not handler.response_streaming:
        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            if (refusal := metadata_refusal(context)) is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            return await cast(Awaitable[Any], behavior(requests, context))

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    if handler.request_streaming:
        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
            if (refusal := metadata_refusal(context)) is not None:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            async for answer in _answers(behavior(requests, context)):
                yield answer

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
    if not handler.response_streaming:
        async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await cast(Awaitable[Any], behavior(await message(context), context))

        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)

    async def streaming(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for answer in _answers(behavior(await message(context), context)):
            yield answer

    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)


async def _answers(answers: Any) -> AsyncIterator[Any]:
    """The answers of a response-streaming behaviour: an async generator's, or none from a coroutine that
    writes with context.write()."""
    if inspect.isasyncgen(answers):
        async for answer in answers:
            yield answer
    else:
        await cast(Awaitable[None], answers)
