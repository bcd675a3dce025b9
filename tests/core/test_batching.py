"""Unit tests of the dynamic batcher (onnx_serve.core.batching) with an in-memory executor that records every
batch it runs. No timing assertions: where a delay matters it is either far longer than the test (so
"sent at once" is unambiguous) or only bounds a wait."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from onnx_serve.core.batching import Batcher, BatchPolicy, BatchTiming, JobResult
from onnx_serve.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from onnx_serve.core.scheduling import QueuePolicy

LONG_NS = 60 * 1_000_000_000  # a delay no test waits for


class RecordingExecutor:
    """Doubles its input; records batch sizes; can be held closed to keep requests queued."""

    def __init__(self, instances: int = 1) -> None:
        self.batches: list[int] = []
        self.inputs: list[dict[str, np.ndarray]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.idle: asyncio.Queue[int] = asyncio.Queue()
        for i in range(instances):
            self.idle.put_nowait(i)
        self.running = 0
        self.max_running = 0

    async def acquire(self) -> int:
        return await self.idle.get()

    def release(self, instance: Any) -> None:
        self.idle.put_nowait(instance)

    def start(self, instance: Any, feeds: dict[str, np.ndarray]) -> asyncio.Future[tuple[list[np.ndarray], int]]:
        return asyncio.ensure_future(self.run(feeds))

    async def run(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            self.batches.append(next(iter(feeds.values())).shape[0])
            self.inputs.append(feeds)
            return [feeds["x"] * 2], 1000
        finally:
            self.running -= 1


class Observer:
    def __init__(self) -> None:
        self.timings: list[BatchTiming] = []
        self.depths: list[int] = []

    def batch_executed(self, timing: BatchTiming) -> None:
        self.timings.append(timing)

    def queue_depth_changed(self, depth: int) -> None:
        self.depths.append(depth)


def sample(n: int, value: float = 1.0, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def started(policy: BatchPolicy, executor: RecordingExecutor, observer: Observer | None = None) -> Batcher:
    batcher = Batcher(policy, executor, observer)
    batcher.start()
    return batcher


async def held(
    policy: BatchPolicy, observer: Observer | None = None, first: dict[str, np.ndarray] | None = None
) -> tuple[RecordingExecutor, Batcher, asyncio.Future[JobResult]]:
    """A batcher whose only instance is busy: its executor is held closed (until `executor.gate.set()`) with
    `first` (one sample by default) already running."""
    executor = RecordingExecutor()
    executor.gate.clear()
    batcher = await started(policy, executor, observer)
    running = await queued(batcher, first if first is not None else sample(1))
    return executor, batcher, running[0]


async def queued(batcher: Batcher, *requests: dict[str, np.ndarray]) -> list[asyncio.Future[JobResult]]:
    """Submits `requests` without waiting for their answers, then gives the batcher time to take them in."""
    futures = [asyncio.ensure_future(batcher.submit(feeds)) for feeds in requests]
    await asyncio.sleep(0.01)
    return futures


async def test_waits_for_company_until_max_batch_size() -> None:
    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_ns=LONG_NS), executor)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(sample(1, i)) for i in range(4))), 10)
    assert executor.batches == [4]
    assert [float(r.outputs[0][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]
    await batcher.close()


async def test_preferred_batch_size_sends_at_once() -> None:
    executor = RecordingExecutor()
    policy = BatchPolicy(max_batch_size=64, dynamic=True, max_queue_delay_ns=LONG_NS, preferred_batch_sizes=(2,))
    batcher = await started(policy, executor)
    await asyncio.wait_for(asyncio.gather(batcher.submit(sample(1)), batcher.submit(sample(1))), 10)
    assert executor.batches == [2]
    await batcher.close()


async def test_preferred_size_takes_longest_matching_prefix() -> None:
    policy = BatchPolicy(max_batch_size=64, dynamic=True, max_queue_delay_ns=0, preferred_batch_sizes=(2, 4))
    executor, batcher, blocker = await held(policy)
    rest = await queued(batcher, *(sample(1) for _ in range(5)))
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *rest), 10)
    assert executor.batches == [1, 4, 1]
    await batcher.close()


async def test_oldest_request_goes_alone_after_the_delay() -> None:
    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_ns=20_000_000), executor)
    result = await asyncio.wait_for(batcher.submit(sample(1)), 10)
    assert executor.batches == [1]
    assert result.batch.batch_size == 1
    await batcher.close()


async def test_zero_delay_batches_only_what_queued_while_busy() -> None:
    executor, batcher, first = await held(BatchPolicy(max_batch_size=8, dynamic=True))
    rest = await queued(batcher, *(sample(1) for _ in range(3)))
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert executor.batches == [1, 3]
    await batcher.close()


async def test_multi_sample_requests_are_combined_and_split_back_exactly() -> None:
    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=6, dynamic=True, max_queue_delay_ns=LONG_NS), executor)
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    b = {"x": np.arange(6, 18, dtype=np.float32).reshape(4, 3)}
    ra, rb = await asyncio.wait_for(asyncio.gather(batcher.submit(a), batcher.submit(b)), 10)
    assert executor.batches == [6]
    np.testing.assert_array_equal(ra.outputs[0], a["x"] * 2)
    np.testing.assert_array_equal(rb.outputs[0], b["x"] * 2)
    await batcher.close()


async def test_requests_with_different_shapes_are_never_mixed() -> None:
    executor, batcher, blocker = await held(BatchPolicy(max_batch_size=8, dynamic=True, max_queue_delay_ns=0))
    mixed = await queued(batcher, *(sample(1, width=3 if i % 2 else 5) for i in range(4)))
    executor.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*mixed), 10)
    await blocker
    widths = [feeds["x"].shape[1] for feeds in executor.inputs[1:]]
    assert sorted(executor.batches[1:]) == [2, 2] and sorted(widths) == [3, 5]
    assert [r.outputs[0].shape[1] for r in results] == [5, 3, 5, 3]
    await batcher.close()


async def test_queue_full_is_refused_at_once() -> None:
    policy = BatchPolicy(max_batch_size=1, dynamic=True, queue=QueuePolicy(max_queue_size=2))
    executor, batcher, running = await held(policy)
    waiting = await queued(batcher, sample(1), sample(1))
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit(sample(1))
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(running, *waiting), 10)
    assert executor.batches == [1, 1, 1]
    await batcher.close()


async def test_expired_requests_are_answered_and_never_run() -> None:
    executor, batcher, blocker = await held(BatchPolicy(max_batch_size=4, dynamic=True), Observer(), sample(1, 7.0))
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(sample(1, 9.0), deadline_ns=time.monotonic_ns() + 5_000_000)
    executor.gate.set()
    await asyncio.wait_for(blocker, 10)
    await asyncio.sleep(0.01)
    ran = [float(v) for feeds in executor.inputs for v in feeds["x"][:, 0]]
    assert ran == [7.0]
    await batcher.close()


async def test_the_default_queue_timeout_rejects_a_queued_request_as_triton() -> None:
    policy = BatchPolicy(max_batch_size=4, dynamic=True, queue=QueuePolicy(default_timeout_ns=5_000_000))
    executor, batcher, running = await held(policy, first=sample(1, 1.0))
    with pytest.raises(Unavailable, match=r"^Request timeout expired"):  # Triton's status and words
        await batcher.submit(sample(1, 2.0))
    executor.gate.set()
    await asyncio.wait_for(running, 10)  # a queue timeout ends with the queue: the running one is answered
    assert [float(v) for feeds in executor.inputs for v in feeds["x"][:, 0]] == [1.0]
    await batcher.close()


async def test_oversized_request_is_refused_or_split() -> None:
    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=4, dynamic=True), executor)
    with pytest.raises(InvalidArgument, match="exceeds the model's max_batch_size 4"):
        await batcher.submit(sample(10))
    await batcher.close()

    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=4, dynamic=True, split_oversized=True), executor)
    big = {"x": np.arange(30, dtype=np.float32).reshape(10, 3)}
    result = await asyncio.wait_for(batcher.submit(big), 10)
    np.testing.assert_array_equal(result.outputs[0], big["x"] * 2)
    assert sorted(executor.batches) == [2, 4, 4]
    await batcher.close()


async def test_batching_off_runs_each_request_alone() -> None:
    executor = RecordingExecutor()
    executor.gate.clear()
    batcher = await started(BatchPolicy(max_batch_size=8, dynamic=False), executor)
    futures = [asyncio.ensure_future(batcher.submit(sample(2))) for _ in range(3)]
    await asyncio.sleep(0.01)
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert executor.batches == [2, 2, 2]
    await batcher.close()


async def test_unbatched_model_gets_inputs_as_sent() -> None:
    executor = RecordingExecutor()
    batcher = await started(BatchPolicy(max_batch_size=0), executor)
    result = await asyncio.wait_for(batcher.submit({"x": np.ones((2, 2), np.float32)}), 10)
    assert result.outputs[0].shape == (2, 2)
    await batcher.close()


async def test_instances_run_batches_in_parallel() -> None:
    executor = RecordingExecutor(instances=2)
    executor.gate.clear()
    batcher = await started(BatchPolicy(max_batch_size=1, dynamic=True), executor)
    futures = [asyncio.ensure_future(batcher.submit(sample(1))) for _ in range(4)]
    await asyncio.sleep(0.02)
    assert executor.running == 2
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert executor.max_running == 2
    await batcher.close()


async def test_observer_sees_batches_and_queue_returns_to_zero() -> None:
    executor = RecordingExecutor()
    observer = Observer()
    batcher = await started(BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_ns=LONG_NS), executor,
                            observer)
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(sample(1)) for _ in range(4))), 10)
    assert [t.batch_size for t in observer.timings] == [4]
    assert observer.depths[-1] == 0 and max(observer.depths) >= 1
    await batcher.close()


async def test_cancelled_request_is_not_run() -> None:
    executor, batcher, blocker = await held(BatchPolicy(max_batch_size=4, dynamic=True), first=sample(1, 1.0))
    [doomed] = await queued(batcher, sample(1, 5.0))
    doomed.cancel()
    await asyncio.sleep(0.01)
    executor.gate.set()
    await asyncio.wait_for(blocker, 10)
    await asyncio.sleep(0.01)
    assert [float(v) for feeds in executor.inputs for v in feeds["x"][:, 0]] == [1.0]
    await batcher.close()
