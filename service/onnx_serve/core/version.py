"""One model version and one model as the repository holds them: state (LOADING, READY, UNAVAILABLE,
UNLOADING) with a reason, sessions and batcher, statistics and metric series, and the pins that make
close() wait for the calls that chose the version."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from onnx_serve.core.batching import Batcher, BatchTiming, JobResult
from onnx_serve.core.errors import Unavailable
from onnx_serve.core.metrics import VersionMetrics
from onnx_serve.core.model_config import ModelConfig
from onnx_serve.core.runtime import RunnerPool, Signature
from onnx_serve.core.stats import ModelStats


class State(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class VersionObserver:
    """Feeds one batcher's events to both the ModelStatistics counters and Prometheus."""

    def __init__(self, stats: ModelStats, metrics: VersionMetrics) -> None:
        self.stats, self.metrics = stats, metrics

    def batch_executed(self, timing: BatchTiming) -> None:
        self.stats.batch_executed(timing)
        self.metrics.batch_executed(timing)

    def queue_depth_changed(self, depth: int) -> None:
        self.metrics.queue_depth_changed(depth)


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    metrics: VersionMetrics
    state: State = State.LOADING
    reason: str = ""
    signature: Signature = field(default_factory=lambda: Signature((), ()))
    providers: tuple[str, ...] = ()
    max_batch_size: int = 0
    labels: list[str] | None = None
    stats: ModelStats = field(default_factory=ModelStats)
    runners: RunnerPool | None = None
    batcher: Batcher | None = None
    _pins: int = field(default=0, repr=False)
    _unpinned: asyncio.Event | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def pin(self) -> None:
        """Holds this version for one call, from lookup to answer (release it with unpin()): close() waits for
        every pinned call, so a reload or unload never retires a version under a request that chose it."""
        self._pins += 1

    def unpin(self) -> None:
        self._pins -= 1
        if self._pins == 0 and self._unpinned is not None:
            self._unpinned.set()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[ModelVersion]:
        """pin() and unpin() around a block (the request path calls them directly: a generator costs more)."""
        self.pin()
        try:
            yield self
        finally:
            self.unpin()

    async def infer(self, inputs: dict[str, np.ndarray], deadline_ns: int | None) -> JobResult:
        # UNLOADING still serves the calls pinned before close() began (new lookups no longer find it).
        if self.batcher is None or self.state not in (State.READY, State.UNLOADING):
            raise Unavailable(f"model '{self.name}' version {self.version} is {self.state.value.lower()}")
        return await self.batcher.submit(inputs, deadline_ns)

    async def close(self, forget_metrics: bool = True) -> None:
        """Waits for the calls pinned to this version, then drains and stops it. `forget_metrics` is False
        when a reload replaces it with the same version number: its series are the replacement's now
        (prometheus_client shares children by label)."""
        self.state = State.UNLOADING
        if self._pins:
            if self._unpinned is None:  # shared, should close() be awaited twice
                self._unpinned = asyncio.Event()
            await self._unpinned.wait()
        if self.batcher is not None:
            await self.batcher.close()
        if self.runners is not None:
            await asyncio.to_thread(self.runners.close)
        if forget_metrics:
            self.metrics.forget()


@dataclass(eq=False)
class Model:
    name: str
    directory: Path
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: State = State.LOADING
    reason: str = ""

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.ready]
