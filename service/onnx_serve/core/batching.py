"""Dynamic batching per model version, with Triton's semantics (pure asyncio, no gRPC).

A request becomes a Job that carries `size` samples along axis 0 of every input. Jobs wait in one queue;
the scheduler takes an idle model instance first, then forms a batch from the oldest job and every later
job with the same non-batch shapes (others are never mixed in and keep their place):
- a batch goes as soon as it reaches max_batch_size or a preferred_batch_size;
- otherwise it goes when the oldest job has waited max_queue_delay_microseconds (0: at once);
- beyond max_queue_size queued jobs, submit fails at once with RESOURCE_EXHAUSTED;
- a job whose deadline (the client's, or default_timeout_microseconds) has passed is answered
  DEADLINE_EXCEEDED and never runs.
Inputs are stacked with one copy (none for a single job) and outputs split back as views.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from onnx_serve.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable

Clock = Callable[[], int]  # monotonic nanoseconds
TIMER_RESOLUTION_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 0  # 0: the model has no batch axis; each job runs alone, as sent
    dynamic: bool = False  # combine jobs (dynamic batching on)
    max_queue_delay_ns: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0 = unbounded
    default_timeout_ns: int = 0  # 0 = none
    split_oversized: bool = False


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
    deadline_ns: int | None
    future: asyncio.Future[JobResult] = field(repr=False)


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
        self._queue: list[Job] = []
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

    async def submit(self, inputs: dict[str, np.ndarray], deadline_ns: int | None = None) -> JobResult:
        """Queues one request's inputs and waits for all model outputs (in the model's output order).
        `deadline_ns` is on this batcher's clock."""
        if self._closed:
            raise Unavailable("the model is being unloaded")
        policy = self.policy
        size = self._size_of(inputs)
        if policy.max_batch_size and size < 1:  # as Triton: a request carries at least one sample
            raise InvalidArgument("batch size 0: the first (batch) axis of every input must be at least 1")
        if policy.max_batch_size and size > policy.max_batch_size:
            if not policy.split_oversized:
                raise InvalidArgument(f"batch of {size} exceeds the model's max_batch_size {policy.max_batch_size}")
            return await self._submit_split(inputs, size, deadline_ns)
        now = self._clock()
        if policy.default_timeout_ns:
            timeout_at = now + policy.default_timeout_ns
            deadline_ns = timeout_at if deadline_ns is None else min(deadline_ns, timeout_at)
        if policy.max_queue_size and len(self._queue) >= policy.max_queue_size:
            raise ResourceExhausted(f"the model's queue is full ({policy.max_queue_size} requests waiting)")
        key = tuple((name, a.dtype.char, a.shape[1:] if policy.max_batch_size else a.shape)
                    for name, a in inputs.items())
        job = Job(inputs, size, key, now, deadline_ns, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._observer.queue_depth_changed(len(self._queue))
        self._arrived.set()
        # A cancelled or timed-out wait cancels job.future; the scheduler skips jobs whose future is done.
        if deadline_ns is None:
            return await job.future
        try:
            return await asyncio.wait_for(job.future, max(deadline_ns - now, 0) / 1e9)
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before inference finished") from None

    async def _submit_split(self, inputs: dict[str, np.ndarray], size: int, deadline_ns: int | None
                            ) -> JobResult:
        step = self.policy.max_batch_size
        parts = [{n: a[i : i + step] for n, a in inputs.items()} for i in range(0, size, step)]
        results = await asyncio.gather(*(self.submit(p, deadline_ns) for p in parts))
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
            wait_ns = self._queue[0].enqueued_ns + policy.max_queue_delay_ns - self._clock()
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
        self._observer.queue_depth_changed(len(self._queue))
        return jobs

    def _drop_dead(self) -> None:
        now = self._clock()
        alive = []
        for job in self._queue:
            if job.future.done():
                continue
            if job.deadline_ns is not None and now >= job.deadline_ns:
                job.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
                continue
            alive.append(job)
        if len(alive) != len(self._queue):
            self._queue = alive
            self._observer.queue_depth_changed(len(alive))

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
            _fail(jobs, exc)
            return
        self._batches_running += 1
        running.add_done_callback(functools.partial(self._finish, instance, jobs, start, compute_input_ns))

    def _finish(self, instance: Any, jobs: list[Job], start: int, compute_input_ns: int,
                running: asyncio.Future[tuple[list[np.ndarray], int]]) -> None:
        self._batches_running -= 1
        self._executor.release(instance)
        if running.cancelled():
            _fail(jobs, Unavailable("the model was unloaded while the request ran"))
            return
        if (exc := running.exception()) is not None:
            _fail(jobs, exc)
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
            if not job.future.done():
                job.future.set_result(JobResult(outs, start - job.enqueued_ns, timing))


def _fail(jobs: list[Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
