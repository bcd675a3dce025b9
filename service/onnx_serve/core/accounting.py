"""The accounting of one call, done once for every edge: the in-flight gauge, the request counter and
duration histogram, tracing spans, the access log, and the failure log line with its request id.

Units, the same for every API:
- a *request* is one call of the data plane (one ModelInfer, one Classify, one stream message);
- an *inference* is one sample: one image, or one row along the batch axis.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from onnx_serve.core import tracing
from onnx_serve.core.batching import JobResult
from onnx_serve.core.errors import Internal, ServeError, bounded_message
from onnx_serve.core.metrics import Metrics

log = logging.getLogger("onnx_serve.requests")
access_log = logging.getLogger("onnx_serve.access")

# Failures that are the server's to fix (or capacity's): logged at WARNING. A client's own mistakes are
# logged at DEBUG, so bad clients cannot fill the log by default.
SERVER_SIDE_CODES = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
CANCELLED = "CANCELLED"


@dataclass(slots=True)
class CallRecord:
    """One request that names a model: times it, tracks it in flight and records its outcome exactly once
    (in `finish`)."""

    metrics: Metrics
    api: str
    model: str
    given_id: str
    model_known: bool = True  # False: the repository has no such model (bounds the metric labels)
    version: str = ""
    code: str = "OK"
    started_ns: int = field(default_factory=time.perf_counter_ns)
    label: str = ""
    _generated_id: str = ""
    stages: list[tuple[str, int, int]] | None = None  # (name, start, end) perf_counter ns; only when tracing

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

    def stage(self, name: str, start_ns: int, end_ns: int) -> None:
        if tracing.enabled():
            if self.stages is None:
                self.stages = []
            self.stages.append((name, start_ns, end_ns))

    def batch_stages(self, result: JobResult, done_ns: int) -> None:
        """Queue and inference spans of a batcher result, worked back from when the result arrived (the
        batcher's times are durations, so no two clocks are mixed)."""
        if tracing.enabled():
            inference_start = done_ns - result.batch.compute_infer_ns
            queue_end = inference_start - result.batch.compute_input_ns
            self.stage("queue", queue_end - result.queue_ns, queue_end)
            self.stage("inference", inference_start, done_ns)

    def failed(self, exc: BaseException) -> BaseException:
        """Records why this call failed and logs it with the request id; returns what to raise to the edge:
        the ServeError itself, an opaque Internal error for a bug (its traceback is logged, never sent), or a
        cancellation as it is."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = CANCELLED
            return exc
        what = f"{self.api} {self.model!r}"[:200]
        request_id = self.request_id[:200]
        if isinstance(exc, ServeError):
            self.code = exc.status_name
            level = logging.WARNING if exc.status_name in SERVER_SIDE_CODES else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "%s failed (request id %s): %s", what, request_id, bounded_message(str(exc)),
                        extra={"request_id": request_id, "what": what, "code": exc.status_name})
            return exc
        self.code = Internal.status_name
        log.error("%s failed with an internal error (request id %s)", what, request_id, exc_info=exc,
                  extra={"request_id": request_id, "what": what, "code": self.code})
        return Internal(f"internal error (request id {self.request_id})")

    def finish(self) -> None:
        elapsed_ns = self.elapsed_ns
        if tracing.enabled():
            tracing.record_request(self.api, self.model[:200], self.version, self.request_id[:200], self.code,
                                   self.started_ns, self.started_ns + elapsed_ns, self.stages or [])
        self.metrics.inflight_for(self.label).dec()
        self.metrics.request_done(self.label, self.version, self.api, self.code, elapsed_ns / 1e9)
        if access_log.isEnabledFor(logging.INFO):
            fields = {"api": self.api, "model": self.model[:200], "version": self.version,
                      "request_id": self.request_id[:200], "code": self.code, "ms": round(elapsed_ns / 1e6, 3)}
            access_log.info("%s model=%s version=%s id=%s code=%s %.3fms", self.api, fields["model"], self.version,
                            fields["request_id"], self.code, fields["ms"], extra=fields)
