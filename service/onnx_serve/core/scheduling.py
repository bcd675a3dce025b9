"""What the dynamic batcher (core/batching.py) is told: a model version's BatchPolicy, with Triton's priority
levels and queue policies (dynamic_batching.priority_levels, default_queue_policy, priority_queue_policy), and
each request's Schedule (Triton's `priority` and `timeout` request parameters)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from onnx_serve.core import model_config
from onnx_serve.core.model_config import DEFAULT_MAX_QUEUE_SIZE, DynamicBatching


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy, for one priority level."""

    max_queue_size: int = 0  # jobs waiting at the level (delayed ones too); 0 = unbounded
    default_timeout_ns: int = 0  # the longest a job may wait in the queue; 0 = no limit
    allow_timeout_override: bool = False  # a request's `timeout` may make it shorter
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)

    def timeout_ns(self, requested_us: int) -> int:
        """A job's queue timeout: the default, or the request's where it may override it and is shorter (with
        no default, any is; Triton's proto: "can set a timeout that is less than the default")."""
        if self.allow_timeout_override and requested_us > 0:
            requested = requested_us * 1000
            if not self.default_timeout_ns or requested < self.default_timeout_ns:
                return requested
        return self.default_timeout_ns


@dataclass(frozen=True, slots=True)
class Schedule:
    """What a request asks of the scheduler (Triton's schedule policy extension): `priority` 1 is the highest
    level, 0 (or one above priority_levels) the model's default; `timeout_us` its queue timeout, 0 = none."""

    priority: int = 0
    timeout_us: int = 0


DEFAULT_SCHEDULE = Schedule()
# The schedule of the request this task is serving: the data plane sets it (scheduled()) around
# ModelVersion.infer, which hands submit() only the inputs and the deadline.
REQUEST_SCHEDULE: ContextVar[Schedule] = ContextVar("onnx_serve_request_schedule", default=DEFAULT_SCHEDULE)


@contextlib.contextmanager
def scheduled(schedule: Schedule) -> Iterator[None]:
    """Within the block, submit() calls that pass no schedule of their own use `schedule`."""
    token = REQUEST_SCHEDULE.set(schedule)
    try:
        yield
    finally:
        REQUEST_SCHEDULE.reset(token)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 0  # 0: the model has no batch axis; each job runs alone, as sent
    dynamic: bool = False  # combine jobs (dynamic batching on)
    max_queue_delay_ns: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    queue: QueuePolicy = field(default_factory=QueuePolicy)  # default_queue_policy: every level without its own
    priority_levels: int = 0  # 0: one level, request priorities ignored (as Triton)
    default_priority_level: int = 0
    priority_queues: tuple[tuple[int, QueuePolicy], ...] = ()  # priority_queue_policy
    preserve_ordering: bool = False
    split_oversized: bool = False

    def level_of(self, priority: int) -> int:
        """Triton's InferenceRequest::SetPriority: 0 or a priority above the levels is the default level."""
        return self.default_priority_level if priority == 0 or priority > self.priority_levels else priority

    def queue_policy(self, level: int) -> QueuePolicy:
        return next((policy for number, policy in self.priority_queues if number == level), self.queue)


def batch_policy(batching: DynamicBatching | None, max_batch_size: int, *, split_oversized: bool) -> BatchPolicy:
    """The batcher's policy of a model version's dynamic_batching (None: each request alone, in a bounded
    queue)."""
    if batching is None:
        return BatchPolicy(max_batch_size=max_batch_size, queue=QueuePolicy(max_queue_size=DEFAULT_MAX_QUEUE_SIZE),
                           split_oversized=split_oversized)
    return BatchPolicy(
        max_batch_size=max_batch_size,
        dynamic=max_batch_size > 0,
        max_queue_delay_ns=batching.max_queue_delay_microseconds * 1000,
        preferred_batch_sizes=batching.preferred_batch_size,
        queue=_queue_policy(batching.default_queue_policy),
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        priority_queues=tuple((level, _queue_policy(policy)) for level, policy in batching.priority_queue_policy),
        preserve_ordering=batching.preserve_ordering,
        split_oversized=split_oversized,
    )


def _queue_policy(policy: model_config.QueuePolicy) -> QueuePolicy:
    return QueuePolicy(max_queue_size=policy.max_queue_size,
                       default_timeout_ns=policy.default_timeout_microseconds * 1000,
                       allow_timeout_override=policy.allow_timeout_override,
                       delay_on_timeout=policy.timeout_action == "DELAY")
