"""Per model version counters for the ModelStatistics RPC, with Triton's statistics semantics:
durations are cumulative nanoseconds; every request of a batch is charged that batch's compute times;
inference_count counts samples, execution_count counts batches run."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field, replace

from onnx_serve.core.batching import BatchTiming


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(ns, 0)


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def batch_executed(self, timing: BatchTiming, compute_output_ns: int = 0) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += timing.batch_size
            self.last_inference_ms = time.time_ns() // 1_000_000
            per_size = self.batches.setdefault(timing.batch_size, BatchDurations())
            per_size.compute_input.add(timing.compute_input_ns)
            per_size.compute_infer.add(timing.compute_infer_ns)
            per_size.compute_output.add(compute_output_ns)

    def request_succeeded(self, total_ns: int, queue_ns: int, timing: BatchTiming, compute_output_ns: int) -> None:
        with self._lock:
            self.success.add(total_ns)
            self.queue.add(queue_ns)
            self.compute_input.add(timing.compute_input_ns)
            self.compute_infer.add(timing.compute_infer_ns)
            self.compute_output.add(compute_output_ns)

    def request_failed(self, total_ns: int) -> None:
        with self._lock:
            self.fail.add(total_ns)

    def snapshot(self) -> ModelStats:
        """A consistent copy, taken under the lock, for reporting while requests keep counting."""
        with self._lock:
            return replace(self, batches=copy.deepcopy(self.batches), _lock=threading.Lock(),
                           **{name: replace(getattr(self, name)) for name in DURATION_FIELDS})


DURATION_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
