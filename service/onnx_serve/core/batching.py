"""Dynamic batching per model version, with Triton's semantics (pure asyncio, no gRPC).

A request becomes a Job that carries `size` samples along axis 0 of every input. Jobs wait in one queue, in
priority order (Triton's priority_levels: level 1 first), oldest first within a level, the jobs a timeout
delayed after the others of their level. The scheduler takes an idle model instance first, then forms a batch
from the first job and every later job with the same non-batch shapes (others are never mixed in and keep
their place):
- a batch goes as soon as it reaches max_batch_size or a preferred_batch_size;
- otherwise it goes when its oldest job has waited max_queue_delay_microseconds (0: at once);
- beyond its level's max_queue_size queued jobs, submit fails at once with RESOURCE_EXHAUSTED;
- a job still queued when its queue timeout (its level's default_timeout_microseconds, or the request's
  `timeout` where allow_timeout_override lets it be shorter) is over is answered UNAVAILABLE "Request timeout
  expired" (timeout_action REJECT, as Triton) or moved behind the others of its level (DELAY);
- a job whose client deadline has passed is answered DEADLINE_EXCEEDED and never runs;
- with preserve_ordering, answers are handed out in the order the requests came.
Inputs are stacked with one copy (none for a single job) and outputs split back as views.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from onnx_serve.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from onnx_serve.core.scheduling import REQUEST_SCHEDULE, BatchPolicy, Schedule

Clock = Callable[[], int]  # monotonic nanoseconds
TIMER_RESOLUTION_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class BatchTiming:
    batch_size: int
    compute_input_ns: int
    compute_infer_ns: int


@dataclass(frozen=True, slots=True)
class JobResult:
    outputs: list[np.ndarray]  # in the order the executor returned them
    queue_ns: int
    batch: BatchTiming


class Executor(Protocol):
    """Runs one batch on an acquired model instance (see runtime.RunnerPool)."""

    async def acquire(self) -> Any: ...
    def release(self, instance: Any) -> None: ...
    def start(self, instance: Any, feeds: dict[str, np.ndarray]) -> asyncio.Future[tuple[list[np.ndarray], int]]:
        """Starts running a batch; the future gives every output (model order) and the run time in ns."""
        ...


class Observer(Protocol):
    def batch_executed(self, timing: BatchTiming) -> None: ...
    def queue_depth_changed(self, depth: int) -> None: ...


class _NullObserver:
    def batch_executed(self, timing: BatchTiming) -> None:
        pass

    def queue_depth_changed(self, depth: int) -> None:
        pass


@dataclass(slots=True, eq=False)
class Job:
    inputs: dict[str, np.ndarray]
    size: int
    key: tuple[Any, ...]
    enqueued_ns: int
    deadline_ns: int | None  # the client's
    future: asyncio.Future[JobResult] = field(repr=False)
    level: int = 0
    seq: int = 0  # arrival order
    expires_ns: int | None = None  # the end of its queue timeout (None: none, or already delayed)
    delay_on_timeout: bool = False
    delayed: bool = False
    queued: bool = True
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    outcome: JobResult | BaseException | None = field(default=None, repr=False)  # held for preserve_ordering


class Batcher:
    def __init__(
        self,
        policy: BatchPolicy,
        executor: Executor,
        observer: Observer | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> None:
        self.policy = policy
        self._executor = executor
        self._observer = observer or _NullObserver()
        self._clock = clock
        self._queue: list[Job] = []  # sorted by Job.order
        self._depth: Counter[int] = Counter()  # queued jobs per priority level
        self._arrivals = itertools.count()
        self._answer_order: deque[Job] = deque()  # preserve_ordering: jobs not yet answered, in arrival order
        self._arrived = asyncio.Event()
        self._batches_running = 0
        self._scheduler: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="batcher")

    async def submit(self, inputs: dict[str, np.ndarray], deadline_ns: int | None = None,
                     schedule: Schedule | None = None) -> JobResult:
        """Queues one request's inputs and waits for all model outputs (in the model's output order).
        `deadline_ns` is the client's, on this batcher's clock; `schedule` its priority and queue timeout
        (None: the one scheduled() set, else none)."""
        if self._closed:
            raise Unavailable("the model is being unloaded")
        policy = self.policy
        schedule = schedule or REQUEST_SCHEDULE.get()
        size = self._size_of(inputs)
        if policy.max_batch_size and size < 1:  # as Triton: a request carries at least one sample
            raise InvalidArgument("batch size 0: the first (batch) axis of every input must be at least 1")
        if policy.max_batch_size and size > policy.max_batch_size:
            if not policy.split_oversized:
                raise InvalidArgument(f"batch of {size} exceeds the model's max_batch_size {policy.max_batch_size}")
            return await self._submit_split(inputs, size, deadline_ns, schedule)
        now = self._clock()
        level = policy.level_of(schedule.priority)
        queue_policy = policy.queue_policy(level)
        if queue_policy.max_queue_size and self._depth[level] >= queue_policy.max_queue_size:
            where = f" at priority level {level}" if policy.priority_levels else ""
            raise ResourceExhausted(f"the model's queue is full ({queue_policy.max_queue_size} requests "
                                    f"waiting{where})")
        key = tuple((name, a.dtype.char, a.shape[1:] if policy.max_batch_size else a.shape)
                    for name, a in inputs.items())
        timeout_ns = queue_policy.timeout_ns(schedule.timeout_us)
        loop = asyncio.get_running_loop()
        job = Job(inputs, size, key, now, deadline_ns, loop.create_future(), level, next(self._arrivals),
                  now + timeout_ns if timeout_ns else None, queue_policy.delay_on_timeout)
        if timeout_ns:
            job.timer = loop.call_later(timeout_ns / 1e9, self._timed_out, job)
        bisect.insort(self._queue, job, key=_order)
        self._depth[level] += 1
        if policy.preserve_ordering:
            self._answer_order.append(job)
        self._observer.queue_depth_changed(len(self._queue))
        self._arrived.set()
        # A cancelled or timed-out wait cancels job.future; the scheduler skips jobs whose future is done.
        if deadline_ns is None:
            return await job.future
        try:
            return await asyncio.wait_for(job.future, max(deadline_ns - now, 0) / 1e9)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before inference finished") from None

    async def _submit_split(self, inputs: dict[str, np.ndarray], size: int, deadline_ns: int | None,
                            schedule: Schedule) -> JobResult:
        step = self.policy.max_batch_size
        parts = [{n: a[i : i + step] for n, a in inputs.items()} for i in range(0, size, step)]
        results = await asyncio.gather(*(self.submit(p, deadline_ns, schedule) for p in parts))
        merged = [np.concatenate([r.outputs[k] for r in results]) for k in range(len(results[0].outputs))]
        return JobResult(merged, max(r.queue_ns for r in results), results[-1].batch)

    def _size_of(self, inputs: dict[str, np.ndarray]) -> int:
        if not self.policy.max_batch_size:
            return 1
        sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise InvalidArgument(f"all inputs must share the batch dimension (got sizes {sorted(sizes)})")
        return sizes.pop()

    async def close(self) -> None:
        """Stops accepting work, lets queued and running batches finish, then stops the scheduler."""
        self._closed = True
        while self._queue or self._batches_running:
            self._arrived.set()
            await asyncio.sleep(0.001)
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler

    async def _schedule(self) -> None:
        while True:
            instance = await self._executor.acquire()
            try:
                jobs = await self._next_batch()
            except BaseException:
                self._executor.release(instance)
                raise
            self._dispatch(instance, jobs)

    async def _next_batch(self) -> list[Job]:
        while True:
            self._drop_dead()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            jobs, full = self._candidates()
            policy = self.policy
            wait_ns = min(job.enqueued_ns for job in jobs) + policy.max_queue_delay_ns - self._clock()
            if full or not policy.dynamic or wait_ns <= 0 or self._closed:
                return self._take(jobs)
            self._arrived.clear()
            if wait_ns > TIMER_RESOLUTION_NS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=(wait_ns - TIMER_RESOLUTION_NS) / 1e9)
            else:
                # The event loop's timers round up to whole milliseconds (epoll), which would stretch a
                # 100 us delay to 1 ms; for the last stretch, yield to the loop and look again instead.
                await asyncio.sleep(0)

    def _candidates(self) -> tuple[list[Job], bool]:
        """The jobs the next batch would hold, and whether it should go now (max or preferred size)."""
        policy = self.policy
        first = self._queue[0]
        if not policy.dynamic or not policy.max_batch_size:
            return [first], True
        chosen: list[Job] = []
        total = 0
        preferred_cut = 0  # length of the longest prefix of `chosen` whose size is a preferred size
        for job in self._queue:
            if job.key != first.key:
                continue
            if total + job.size > policy.max_batch_size:
                return chosen, True
            chosen.append(job)
            total += job.size
            if total in policy.preferred_batch_sizes:
                preferred_cut = len(chosen)
        if total == policy.max_batch_size:
            return chosen, True
        if preferred_cut:
            return chosen[:preferred_cut], True
        return chosen, False

    def _take(self, jobs: list[Job]) -> list[Job]:
        taken = set(map(id, jobs))
        self._queue = [job for job in self._queue if id(job) not in taken]
        for job in jobs:
            self._dequeued(job)
        self._observer.queue_depth_changed(len(self._queue))
        return jobs

    def _dequeued(self, job: Job) -> None:
        job.queued = False
        self._depth[job.level] -= 1
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _drop_dead(self) -> None:
        """Drops the jobs nobody waits for or whose client deadline passed, and applies the queue policy to
        those whose queue timeout is over (the timer may not have fired yet)."""
        now = self._clock()
        alive = []
        for job in self._queue:
            if job.future.done():
                self._dequeued(job)
                self._release_answers()
            elif job.deadline_ns is not None and now >= job.deadline_ns:
                self._dequeued(job)
                self._answer(job, DeadlineExceeded("the deadline passed while the request was queued"))
            elif job.expires_ns is not None and now > job.expires_ns and not job.delay_on_timeout:
                self._dequeued(job)
                self._answer(job, _timeout_expired())
            else:
                alive.append(job)
        if len(alive) != len(self._queue):
            self._queue = alive
            self._observer.queue_depth_changed(len(alive))
        for job in [j for j in alive if j.expires_ns is not None and now > j.expires_ns]:
            self._timed_out(job)  # DELAY: moved behind its level

    def _timed_out(self, job: Job) -> None:
        """The job's queue timeout is over: REJECT answers it UNAVAILABLE, DELAY moves it behind the jobs of its
        level that have not timed out (as Triton's delayed queue), with no timeout any more."""
        if not job.queued or job.future.done():
            return
        self._queue.remove(job)
        job.timer, job.expires_ns = None, None
        if job.delay_on_timeout:
            job.delayed = True
            bisect.insort(self._queue, job, key=_order)
            return
        self._dequeued(job)
        self._observer.queue_depth_changed(len(self._queue))
        self._answer(job, _timeout_expired())

    def _dispatch(self, instance: Any, jobs: list[Job]) -> None:
        """Starts the batch on the instance; _finish hands out the results when the worker thread is done. No
        Task per batch: the completion callback answers the waiting requests directly."""
        start = self._clock()
        try:
            if len(jobs) == 1:
                feeds = jobs[0].inputs
            else:
                feeds = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in jobs[0].inputs}
            compute_input_ns = self._clock() - start
            running = self._executor.start(instance, feeds)
        except Exception as exc:
            self._executor.release(instance)
            self._fail(jobs, exc)
            return
        self._batches_running += 1
        running.add_done_callback(functools.partial(self._finish, instance, jobs, start, compute_input_ns))

    def _finish(self, instance: Any, jobs: list[Job], start: int, compute_input_ns: int,
                running: asyncio.Future[tuple[list[np.ndarray], int]]) -> None:
        self._batches_running -= 1
        self._executor.release(instance)
        if running.cancelled():
            self._fail(jobs, Unavailable("the model was unloaded while the request ran"))
            return
        if (exc := running.exception()) is not None:
            self._fail(jobs, exc)
            return
        results, infer_ns = running.result()
        timing = BatchTiming(sum(job.size for job in jobs), compute_input_ns, infer_ns)
        self._observer.batch_executed(timing)
        offset = 0
        for job in jobs:
            if len(jobs) == 1 or not self.policy.max_batch_size:
                outs = results
            else:
                outs = [r[offset : offset + job.size] for r in results]
            offset += job.size
            self._answer(job, JobResult(outs, start - job.enqueued_ns, timing))

    def _fail(self, jobs: list[Job], exc: BaseException) -> None:
        for job in jobs:
            self._answer(job, exc)

    def _answer(self, job: Job, outcome: JobResult | BaseException) -> None:
        """Hands a job its result or error: at once, or with preserve_ordering once every job that came before it
        has been answered (or given up by its client)."""
        if not self.policy.preserve_ordering:
            _settle(job, outcome)
            return
        job.outcome = outcome
        self._release_answers()

    def _release_answers(self) -> None:
        order = self._answer_order
        while order and (order[0].outcome is not None or order[0].future.done()):
            job = order.popleft()
            if job.outcome is not None:
                _settle(job, job.outcome)
                job.outcome = None


def _order(job: Job) -> tuple[int, bool, int]:
    """The queue's order: priority level, then the jobs not delayed by a timeout, then arrival."""
    return job.level, job.delayed, job.seq


def _timeout_expired() -> Unavailable:
    # Triton's words (its clients match on them), then why.
    return Unavailable("Request timeout expired: the request waited in the queue longer than its timeout "
                       "(timeout_action REJECT)")


def _settle(job: Job, outcome: JobResult | BaseException) -> None:
    if job.future.done():  # its client gave up (cancelled, or its deadline passed)
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
