"""What the gRPC servicers share: core errors mapped to gRPC statuses (once, here), deadlines, and serving a
bidirectional stream with bounded concurrency. No accounting: the data plane records every call."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from onnx_serve.core.errors import ServeError, bounded_message

STATUS = {code.name: code for code in grpc.StatusCode}
ServicerContext = grpc.aio.ServicerContext
Req = TypeVar("Req")
Servicer = TypeVar("Servicer")
Resp = TypeVar("Resp")


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    """The client's deadline on time.monotonic_ns(), the clock the data plane and batcher use."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(max(remaining, 0.0) * 1e9)


def status_of(error: ServeError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and the bounded message a client sees for a core error."""
    return STATUS[error.status_name], bounded_message(str(error))


async def abort(context: grpc.aio.ServicerContext, error: ServeError) -> NoReturn:
    await context.abort(*status_of(error))
    raise AssertionError("unreachable: abort raises")


def unary(method: Callable[[Servicer, Req, ServicerContext], Awaitable[Resp]]
          ) -> Callable[[Servicer, Req, ServicerContext], Awaitable[Resp]]:
    """Decorates a unary servicer method: a ServeError it raises ends the RPC with its status."""

    @functools.wraps(method)
    async def answered(servicer: Servicer, request: Req, context: ServicerContext) -> Resp:
        try:
            return await method(servicer, request, context)
        except ServeError as exc:
            await abort(context, exc)

    return answered


async def answer_concurrently(
    requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]],
    failure: Callable[[Req, ServeError], Resp], max_inflight: int
) -> AsyncIterator[Resp]:
    """Serves a bidirectional stream: every request is answered as soon as its own answer is ready (so the
    responses need not follow request order; each carries its request's id), with at most `max_inflight`
    answers pending, computing or waiting to be written, so one stream cannot queue unbounded work or
    unbounded responses: a request's slot is released only once grpc has taken its response (the `yield`
    returns when grpc's flow control has accepted the message), so a client that does not read stops being
    read from. A request that fails is answered `failure(request, error)` in the stream, which stays open."""
    responses: asyncio.Queue[Resp | None] = asyncio.Queue()  # at most max_inflight: each holds its slot
    slots = asyncio.Semaphore(max_inflight)
    tasks: set[asyncio.Task[None]] = set()

    async def run(request: Req) -> None:
        try:
            try:
                response = await answer(request)
            except ServeError as exc:
                response = failure(request, exc)
        except BaseException:
            slots.release()  # no response to write: its slot is free now
            raise
        responses.put_nowait(response)  # keeps its slot until the consumer has taken it

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(run(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks))
        finally:
            responses.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await responses.get()) is not None:
            try:
                yield response
            finally:
                slots.release()
        await reader
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
