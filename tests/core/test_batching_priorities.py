"""The batcher's Triton scheduling knobs (onnx_serve.core.batching with core/scheduling.py): priority levels
and a request's priority, each level's queue policy (max_queue_size, the default timeout, a request's timeout
where allow_timeout_override lets it in, timeout_action REJECT and DELAY), and preserve_ordering. In-memory
executors that hold batches until told; no timing assertions (a short timeout only ever has to pass)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest
from onnx_serve.core.batching import Batcher, BatchPolicy, JobResult
from onnx_serve.core.errors import ResourceExhausted, Unavailable
from onnx_serve.core.scheduling import QueuePolicy, Schedule, scheduled

from tests.core.test_batching import RecordingExecutor, held, sample

LONG_NS = 60 * 1_000_000_000
SHORT_US = 5_000  # a queue timeout that passes while the instance is held


def ran(executor: RecordingExecutor) -> list[float]:
    """The first value of every sample the executor ran, in the order it ran them."""
    return [float(v) for feeds in executor.inputs for v in feeds["x"][:, 0]]


def submit(batcher: Batcher, value: float, priority: int = 0, timeout_us: int = 0) -> asyncio.Future[JobResult]:
    return asyncio.ensure_future(batcher.submit(sample(1, value), schedule=Schedule(priority, timeout_us)))


async def settle() -> None:
    await asyncio.sleep(0.01)  # lets the batcher take in what was submitted


def prioritised(**queue: Any) -> BatchPolicy:
    return BatchPolicy(max_batch_size=1, dynamic=True, priority_levels=3, default_priority_level=2,
                       queue=QueuePolicy(**queue))


async def test_a_higher_priority_request_overtakes_the_queue() -> None:
    executor, batcher, blocker = await held(prioritised())
    waiting = [submit(batcher, 1.0, priority=2), submit(batcher, 2.0), submit(batcher, 3.0, priority=3),
               submit(batcher, 4.0, priority=1), submit(batcher, 5.0, priority=9)]
    await settle()
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *waiting), 10)
    # level 1 first; 0 and a priority above priority_levels are the default level (2), in arrival order
    assert ran(executor) == [1.0, 4.0, 1.0, 2.0, 5.0, 3.0]
    await batcher.close()


async def test_priorities_are_ignored_without_priority_levels() -> None:
    executor, batcher, blocker = await held(BatchPolicy(max_batch_size=1, dynamic=True))
    waiting = [submit(batcher, 1.0, priority=3), submit(batcher, 2.0, priority=1)]
    await settle()
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *waiting), 10)
    assert ran(executor) == [1.0, 1.0, 2.0]
    await batcher.close()


async def test_a_batch_takes_the_highest_priority_requests_first() -> None:
    policy = BatchPolicy(max_batch_size=2, dynamic=True, priority_levels=2, default_priority_level=2)
    executor, batcher, blocker = await held(policy)
    waiting = [submit(batcher, 1.0), submit(batcher, 2.0), submit(batcher, 3.0, priority=1)]
    await settle()
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, *waiting), 10)
    assert executor.batches == [1, 2, 1] and ran(executor) == [1.0, 3.0, 1.0, 2.0]
    await batcher.close()


async def test_each_level_has_its_own_queue_size() -> None:
    policy = BatchPolicy(max_batch_size=1, dynamic=True, priority_levels=2, default_priority_level=2,
                         queue=QueuePolicy(max_queue_size=5), priority_queues=((1, QueuePolicy(max_queue_size=1)),))
    executor, batcher, blocker = await held(policy)
    first = submit(batcher, 1.0, priority=1)
    await settle()
    with pytest.raises(ResourceExhausted, match=re.escape("queue is full (1 requests waiting at priority level 1)")):
        await batcher.submit(sample(1, 2.0), schedule=Schedule(priority=1))
    others = [submit(batcher, 3.0), submit(batcher, 4.0)]  # the default level has room
    await settle()
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, first, *others), 10)
    await batcher.close()


async def test_a_request_timeout_shortens_the_queue_timeout_only_where_the_policy_allows_it() -> None:
    allowing = BatchPolicy(max_batch_size=1, dynamic=True,
                           queue=QueuePolicy(default_timeout_ns=LONG_NS, allow_timeout_override=True))
    executor, batcher, blocker = await held(allowing)
    with pytest.raises(Unavailable, match=r"^Request timeout expired"):
        await batcher.submit(sample(1, 2.0), schedule=Schedule(timeout_us=SHORT_US))
    executor.gate.set()
    await asyncio.wait_for(blocker, 10)
    await batcher.close()

    refusing = BatchPolicy(max_batch_size=1, dynamic=True, queue=QueuePolicy(default_timeout_ns=LONG_NS))
    executor, batcher, blocker = await held(refusing)
    waiting = submit(batcher, 2.0, timeout_us=SHORT_US)
    await asyncio.sleep(0.05)  # well past the request's timeout, which does not apply
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, waiting), 10)
    assert ran(executor) == [1.0, 2.0]
    await batcher.close()


def test_the_queue_timeout_of_a_request() -> None:
    assert QueuePolicy(default_timeout_ns=9_000).timeout_ns(requested_us=1) == 9_000  # no override
    overriding = QueuePolicy(default_timeout_ns=9_000, allow_timeout_override=True)
    assert overriding.timeout_ns(requested_us=1) == 1_000  # shorter: applies
    assert overriding.timeout_ns(requested_us=10) == 9_000  # longer: may not raise it
    assert QueuePolicy(allow_timeout_override=True).timeout_ns(requested_us=7) == 7_000  # no default: any
    assert QueuePolicy().timeout_ns(requested_us=0) == 0


async def test_delay_serves_a_timed_out_request_after_the_others_of_its_level() -> None:
    policy = BatchPolicy(max_batch_size=1, dynamic=True,
                         queue=QueuePolicy(allow_timeout_override=True, delay_on_timeout=True))
    executor, batcher, blocker = await held(policy)
    late = submit(batcher, 2.0, timeout_us=SHORT_US)
    early = submit(batcher, 3.0)
    await asyncio.sleep(0.05)  # the first one's timeout is over: delayed, not rejected
    after = submit(batcher, 4.0)
    await settle()
    executor.gate.set()
    results = await asyncio.wait_for(asyncio.gather(blocker, late, early, after), 10)
    assert ran(executor) == [1.0, 3.0, 4.0, 2.0]
    assert float(results[1].outputs[0][0, 0]) == 4.0  # the delayed request still gets its own answer
    await batcher.close()


async def test_scheduled_sets_the_schedule_of_submits_that_pass_none() -> None:
    executor, batcher, blocker = await held(prioritised())
    low = submit(batcher, 2.0)
    with scheduled(Schedule(priority=1)):
        high = asyncio.ensure_future(batcher.submit(sample(1, 3.0)))  # the task copies the context here
    await settle()
    executor.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, low, high), 10)
    assert ran(executor) == [1.0, 3.0, 2.0]
    await batcher.close()


class GatedExecutor:
    """Two instances; the batch holding value v runs until gates[v] is set."""

    def __init__(self) -> None:
        self.gates = {1.0: asyncio.Event(), 2.0: asyncio.Event()}
        self.idle: asyncio.Queue[int] = asyncio.Queue()
        for instance in (0, 1):
            self.idle.put_nowait(instance)

    async def acquire(self) -> int:
        return await self.idle.get()

    def release(self, instance: Any) -> None:
        self.idle.put_nowait(instance)

    def start(self, instance: Any, feeds: dict[str, np.ndarray]) -> asyncio.Future[tuple[list[np.ndarray], int]]:
        return asyncio.ensure_future(self.run(feeds))

    async def run(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        await self.gates[float(feeds["x"][0, 0])].wait()
        return [feeds["x"] * 2], 1000


@pytest.mark.parametrize("preserve", [True, False])
async def test_preserve_ordering_answers_in_the_order_requests_came(preserve: bool) -> None:
    executor = GatedExecutor()
    batcher = Batcher(BatchPolicy(max_batch_size=1, dynamic=True, preserve_ordering=preserve), executor)
    batcher.start()
    answered: list[float] = []
    first, second = submit(batcher, 1.0), submit(batcher, 2.0)
    for future, value in ((first, 1.0), (second, 2.0)):
        future.add_done_callback(lambda _, v=value: answered.append(v))  # type: ignore[misc]
    await settle()
    executor.gates[2.0].set()  # the second request's batch finishes first
    if not preserve:
        await asyncio.wait_for(second, 10)
    await settle()
    executor.gates[1.0].set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert answered == ([1.0, 2.0] if preserve else [2.0, 1.0])
    await batcher.close()
