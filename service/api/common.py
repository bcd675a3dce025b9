"""What every servicer shares: mapping core errors to gRPC statuses, request ids, deadlines, and the
per-request accounting (metrics, in-flight gauge, statistics) done once at the edge."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from service.errors import ServeError
from service.metrics import Metrics

log = logging.getLogger("service.api")
access_log = logging.getLogger("service.access")

STATUS = {code.name: code for code in grpc.StatusCode}
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(max(remaining, 0.0) * 1e9)


def request_id(given: str) -> str:
    return given or uuid.uuid4().hex[:16]


@dataclass(slots=True)
class Call:
    """One RPC that names a model: times it, tracks it in flight and records its outcome exactly once."""

    metrics: Metrics
    api: str
    model: str
    request_id: str
    version: str = ""
    code: str = "OK"
    started_ns: int = field(default_factory=time.perf_counter_ns)

    def __post_init__(self) -> None:
        self.metrics.inflight.labels(self.model[:64]).inc()

    @property
    def elapsed_ns(self) -> int:
        return time.perf_counter_ns() - self.started_ns

    def finish(self) -> None:
        self.metrics.inflight.labels(self.model[:64]).dec()
        self.metrics.request_done(self.model, self.version, self.api, self.code, self.elapsed_ns / 1e9)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s model=%s version=%s id=%s code=%s %.3fms", self.api, self.model, self.version,
                            self.request_id, self.code, self.elapsed_ns / 1e6)


def describe_failure(exc: BaseException, call_id: str, what: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees: ours for ServeErrors, an opaque one (logged here with the
    traceback and the request id) for bugs."""
    if isinstance(exc, ServeError):
        if exc.status_name in ("INTERNAL", "UNAVAILABLE"):
            log.warning("%s failed (request id %s): %s", what, call_id, exc)
        return STATUS[exc.status_name], str(exc)
    log.error("%s failed with an internal error (request id %s)", what, call_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {call_id})"


async def answer_concurrently(
    requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]], max_inflight: int
) -> AsyncIterator[Resp]:
    """Serves a bidirectional stream: every request is answered as soon as its own answer is ready (so the
    responses need not follow request order; each carries its request's id), with at most `max_inflight`
    answers pending so one stream cannot queue unbounded work. `answer` turns its failures into responses."""
    responses: asyncio.Queue[Resp | None] = asyncio.Queue()
    slots = asyncio.Semaphore(max_inflight)
    tasks: set[asyncio.Task[None]] = set()

    async def run(request: Req) -> None:
        try:
            responses.put_nowait(await answer(request))
        finally:
            slots.release()

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
            yield response
        await reader
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
