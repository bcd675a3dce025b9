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

from onnx_serve.core import tracing
from onnx_serve.core.batching import JobResult
from onnx_serve.core.errors import ServeError
from onnx_serve.core.metrics import Metrics

log = logging.getLogger("onnx_serve.edges.grpc")
access_log = logging.getLogger("onnx_serve.access")

STATUS = {code.name: code for code in grpc.StatusCode}
SERVER_SIDE_CODES = {"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def deadline_ns(context: grpc.aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic_ns() + int(max(remaining, 0.0) * 1e9)


@dataclass(slots=True)
class Call:
    """One RPC that names a model: times it, tracks it in flight and records its outcome exactly once."""

    metrics: Metrics
    api: str
    model: str
    given_id: str
    version: str = ""
    code: str = "OK"
    started_ns: int = field(default_factory=time.perf_counter_ns)
    model_known: bool = True  # False: the repository has no such model
    label: str = ""
    _generated_id: str = ""
    stages: list[tuple[str, int, int]] | None = None  # (name, start, end) perf_counter ns; only when tracing

    def stage(self, name: str, start_ns: int, end_ns: int) -> None:
        if tracing.enabled():
            (self.stages if self.stages is not None else self._new_stages()).append((name, start_ns, end_ns))

    def batch_stages(self, result: JobResult, done_ns: int) -> None:
        """Queue and inference spans of a batcher result, worked back from when the result arrived (the
        batcher's times are durations, so no two clocks are mixed)."""
        if tracing.enabled():
            inference_start = done_ns - result.batch.compute_infer_ns
            queue_end = inference_start - result.batch.compute_input_ns
            self.stage("queue", queue_end - result.queue_ns, queue_end)
            self.stage("inference", inference_start, done_ns)

    def _new_stages(self) -> list[tuple[str, int, int]]:
        self.stages = []
        return self.stages

    def __post_init__(self) -> None:
        self.label = self.metrics.model_label(self.model, self.model_known)
        self.metrics.inflight_for(self.label).inc()

    @property
    def request_id(self) -> str:
        """The client's id, else one generated on first use (for a log line or an error message)."""
        if self.given_id:
            return self.given_id
        if not self._generated_id:
            self._generated_id = uuid.uuid4().hex[:16]
        return self._generated_id

    @property
    def elapsed_ns(self) -> int:
        return time.perf_counter_ns() - self.started_ns

    def failed(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """Records the failure's status for this call's metrics; returns the status and message to answer."""
        code, message = describe_failure(exc, self.request_id, f"{self.api} {self.model!r}")
        self.code = code.name
        return code, message

    async def answer_unary(self, work: Awaitable[Resp], context: grpc.aio.ServicerContext) -> Resp:
        """Answers a unary RPC with `work`'s result, or aborts it with the failure's status; finishes the call."""
        try:
            return await work
        except Exception as exc:
            await context.abort(*self.failed(exc))
            raise  # not reached: abort raises
        finally:
            self.finish()

    async def answer_message(self, work: Awaitable[Resp], failure: Callable[[grpc.StatusCode, str], Resp]) -> Resp:
        """Answers one stream message with `work`'s result, or with `failure(code, message)`, so the stream stays
        open; finishes the call."""
        try:
            return await work
        except Exception as exc:
            return failure(*self.failed(exc))
        finally:
            self.finish()

    def finish(self) -> None:
        if tracing.enabled():
            tracing.record_request(self.api, self.model[:200], self.version, self.request_id[:200], self.code,
                                   self.started_ns, time.perf_counter_ns(), self.stages or [])
        self.metrics.inflight_for(self.label).dec()
        self.metrics.request_done(self.label, self.version, self.api, self.code, self.elapsed_ns / 1e9)
        if access_log.isEnabledFor(logging.INFO):
            fields = {"api": self.api, "model": self.model[:200], "version": self.version,
                      "request_id": self.request_id[:200], "code": self.code, "ms": round(self.elapsed_ns / 1e6, 3)}
            access_log.info("%s model=%s version=%s id=%s code=%s %.3fms", self.api, fields["model"], self.version,
                            fields["request_id"], self.code, fields["ms"], extra=fields)


# The status message travels in HTTP/2 trailers, percent-encoded, under grpc's 8 KiB metadata limit: a message
# echoing a huge untrusted name or datatype would reach the client as RESOURCE_EXHAUSTED "Stream removed".
MAX_STATUS_MESSAGE_CHARS = 400


def bounded_message(text: str) -> str:
    if len(text) <= MAX_STATUS_MESSAGE_CHARS:
        return text
    return text[:MAX_STATUS_MESSAGE_CHARS] + "... (truncated)"


def describe_failure(exc: BaseException, call_id: str, what: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees: ours for ServeErrors, an opaque one for bugs. Every failure is
    logged with the request id: a client's mistake at DEBUG (no per-request noise by default), a server-side
    failure at WARNING, a bug at ERROR with its traceback, which never reaches the client."""
    fields = {"request_id": call_id[:200], "what": what[:200]}
    if isinstance(exc, ServeError):
        message = bounded_message(str(exc))
        fields["code"] = exc.status_name
        level = logging.WARNING if exc.status_name in SERVER_SIDE_CODES else logging.DEBUG
        log.log(level, "%s failed (request id %s): %s", fields["what"], fields["request_id"], message, extra=fields)
        return STATUS[exc.status_name], message
    fields["code"] = "INTERNAL"
    log.error("%s failed with an internal error (request id %s)", fields["what"], fields["request_id"], exc_info=exc,
              extra=fields)
    return grpc.StatusCode.INTERNAL, bounded_message(f"internal error (request id {call_id})")


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
