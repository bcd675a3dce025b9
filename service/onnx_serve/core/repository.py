"""The model repository: models/<name>/<version>/model.onnx with an optional models/<name>/config.yaml.

Each model version is loaded on its own (sessions created and warmed up in a worker thread) and is READY
or UNAVAILABLE with a reason; a broken model never affects the others. A reload loads the new versions
first and swaps them in atomically, then drains the old ones, so requests never see a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from onnx_serve.core.batching import Batcher, BatchPolicy, BatchTiming, JobResult
from onnx_serve.core.errors import ConfigError, InvalidArgument, NotFound, ServeError, Unavailable
from onnx_serve.core.metrics import Metrics, VersionMetrics
from onnx_serve.core.model_config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE, ModelConfig, load_model_config
from onnx_serve.core.runtime import (
    RunnerPool,
    SessionPlan,
    Signature,
    create_session,
    first_line,
    signature_of,
    warmup_feeds,
)
from onnx_serve.core.settings import Settings, default_intra_op_threads
from onnx_serve.core.stats import ModelStats
from onnx_serve.imaging import load_labels

log = logging.getLogger(__name__)
MODEL_FILENAME = "model.onnx"
VERSION_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: int() also takes "٣" and refuses 5000 digits


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


class Repository:
    def __init__(self, root: Path, settings: Settings, metrics: Metrics) -> None:
        self.root = root
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.listeners: list[Callable[[], Awaitable[None]]] = []  # told after every load and unload

    async def _changed(self) -> None:
        for listener in self.listeners:
            await listener()

    def scan(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_all(self) -> None:
        await asyncio.gather(*(self.load(name) for name in self.scan()))

    async def reload_all(self) -> None:
        """SIGHUP: reload every model present on disk, unload the ones that disappeared."""
        names = set(self.scan())
        await asyncio.gather(*(self.unload(name) for name in set(self.models) - names))
        await asyncio.gather(*(self.load(name) for name in sorted(names)))

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> Model:
        """Loads (or reloads) a model; its previous versions keep serving until the new ones are ready."""
        directory = self.root / name
        if not self.on_disk(name):
            raise NotFound(f"model '{name}' is not in the model repository")
        async with self._lock(name):
            started = time.perf_counter()
            model = Model(name, directory)
            previous = self.models.get(name)
            if previous is None:
                self.models[name] = model
            try:
                config = load_model_config(directory / "config.yaml")
                numbers = sorted(int(p.name) for p in directory.iterdir()
                                 if p.is_dir() and VERSION_NUMBER.fullmatch(p.name))
                if not numbers:
                    raise ConfigError(f"{directory}: no version directories (expected {name}/1/{MODEL_FILENAME})")
                chosen = config.version_policy.select(numbers)
                if not chosen:
                    raise ConfigError(f"{directory}: version_policy selects none of the versions {numbers}")
                loaded = await asyncio.gather(*(self._load_version(name, directory, v, config) for v in chosen))
                model.versions = {v.version: v for v in loaded}
                model.state = State.READY if model.ready_versions() else State.UNAVAILABLE
                model.reason = "" if model.ready_versions() else "; ".join(v.reason for v in loaded)
            except ConfigError as exc:
                model.state, model.reason = State.UNAVAILABLE, str(exc)
            if model.state is State.UNAVAILABLE:
                log.error("model %s unavailable: %s", name, model.reason)
            else:
                log.info("model %s ready: versions %s in %.2fs", name,
                         ",".join(str(v.version) for v in model.ready_versions()), time.perf_counter() - started)
            self.models[name] = model
            if previous is not None and previous is not model:
                await self._retire(previous, keep=set(model.versions))
        await self._changed()
        return model

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            model = self.models.pop(name, None)
            if model is None:
                raise NotFound(f"model '{name}' is not loaded")
            await self._retire(model)
            log.info("model %s unloaded", name)
        await self._changed()

    async def _retire(self, model: Model, keep: set[int] | None = None) -> None:
        keep = keep or set()
        await asyncio.gather(*(v.close(forget_metrics=n not in keep) for n, v in model.versions.items()))

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)

    async def _load_version(self, name: str, directory: Path, number: int, config: ModelConfig) -> ModelVersion:
        path = directory / str(number) / MODEL_FILENAME
        version = ModelVersion(name, number, path, config, self.metrics.for_version(name, str(number)))
        version.metrics.set_ready(False)
        started = time.perf_counter()
        try:
            if not path.is_file():
                raise ConfigError(f"{path}: file not found")
            await asyncio.to_thread(self._create_runtime, version)
        except (ConfigError, ServeError) as exc:
            version.state, version.reason = State.UNAVAILABLE, str(exc)
            return version
        except Exception as exc:  # a fault while loading one model must not stop the others
            log.exception("loading %s version %d failed", name, number)
            version.state, version.reason = State.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
            return version
        version.metrics.metrics.model_load_duration.labels(name, str(number)).observe(time.perf_counter() - started)
        assert version.runners is not None  # _create_runtime either sets them or raises
        version.batcher = Batcher(_policy(version), version.runners, VersionObserver(version.stats, version.metrics))
        version.batcher.start()
        version.state = State.READY
        version.metrics.set_ready(True, version.providers)
        return version

    def _create_runtime(self, version: ModelVersion) -> None:
        """Blocking: creates and warms up the sessions, so it runs in a worker thread."""
        config, settings = version.config, self.settings
        plan = SessionPlan(
            providers=config.execution_providers or settings.execution_providers,
            strict_providers=settings.strict_providers,
            options=config.session,
            intra_op_threads=config.session.intra_op_threads or settings.intra_op_threads
            or default_intra_op_threads(settings.workers, config.instance_count),
        )
        sessions = []
        for _ in range(config.instance_count):
            session, providers = create_session(version.path, plan)
            sessions.append(session)
        version.providers = tuple(providers)
        version.signature = signature_of(sessions[0])
        version.max_batch_size = _max_batch_size(version)
        if config.labels:
            version.labels = load_labels(version.path.parent.parent / config.labels)
        if config.preprocess is not None:
            _check_preprocess_fits(version)
        feeds = warmup_feeds(version.signature)
        for session in sessions:
            try:
                session.run(None, feeds)
            except Exception as exc:
                raise ConfigError(f"{version.path}: warm-up inference failed: {first_line(exc)}") from None
        version.runners = RunnerPool(sessions, f"{version.name}-{version.version}")

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the one asked for, else the latest READY one."""
        model = self.models.get(name)
        if model is None:
            if self.on_disk(name):  # in the repository but unloaded (or not loaded yet)
                raise Unavailable(f"model '{name}' is not loaded")
            raise NotFound(f"unknown model '{name}'" if name else "no model name given")
        if version:
            if not VERSION_NUMBER.fullmatch(version):
                raise InvalidArgument(f"model_version '{version}' is not a version number")
            if int(version) not in model.versions:
                raise NotFound(f"model '{name}' has no version '{version}'")
            chosen = model.versions[int(version)]
            if not chosen.ready:
                raise Unavailable(f"model '{name}' version {version} is unavailable: {chosen.reason}")
            return chosen
        ready = model.ready_versions()
        if not ready:
            raise Unavailable(f"model '{name}' is unavailable: {model.reason or model.state.value.lower()}")
        return ready[-1]

    def on_disk(self, name: str) -> bool:
        """Whether `name` is a model directory of the repository (never a path outside it)."""
        if not name or "/" in name or name.startswith("."):
            return False
        try:
            return (self.root / name).is_dir()
        except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
            return False

    def index(self) -> Iterator[tuple[str, str, State, str]]:
        for name in self.scan() if self.root.is_dir() else []:
            model = self.models.get(name)
            if model is None:
                yield name, "", State.UNAVAILABLE, "unloaded"
            elif not model.versions:
                yield name, "", model.state, model.reason
            else:
                for number, version in sorted(model.versions.items()):
                    yield name, str(number), version.state, version.reason

    def all_ready(self) -> bool:
        return bool(self.models) and all(m.state is State.READY for m in self.models.values())


def _check_preprocess_fits(version: ModelVersion) -> None:
    """A Classify sample must fit the model's one input; checked once here, not on every image."""
    preprocess = version.config.preprocess
    assert preprocess is not None
    if len(version.signature.inputs) != 1:
        raise ConfigError(f"{version.path}: preprocess needs a model with exactly one input")
    spec = version.signature.inputs[0]
    shape = (1, *preprocess.output_shape)
    if not spec.accepts_shape(shape) or spec.datatype != preprocess.dtype:
        raise ConfigError(f"{version.path}: preprocess gives {preprocess.dtype} {list(shape)}, which the model's "
                          f"input '{spec.name}' ({spec.datatype} {list(spec.shape)}) does not accept")


def _max_batch_size(version: ModelVersion) -> int:
    configured = version.config.max_batch_size
    batchable = version.signature.has_batch_axis()
    if configured is None:
        return DEFAULT_MAX_BATCH_SIZE if batchable else 0
    if configured > 0 and not batchable:
        raise ConfigError(f"{version.path}: max_batch_size is {configured} but the model's inputs and outputs do "
                          "not all have a dynamic first (batch) axis")
    return configured


def _policy(version: ModelVersion) -> BatchPolicy:
    batching = version.config.dynamic_batching
    if batching is None:
        return BatchPolicy(max_batch_size=version.max_batch_size, max_queue_size=DEFAULT_MAX_QUEUE_SIZE,
                           split_oversized=version.config.oversized_request == "split")
    return BatchPolicy(
        max_batch_size=version.max_batch_size,
        dynamic=version.max_batch_size > 0,
        max_queue_delay_ns=batching.max_queue_delay_microseconds * 1000,
        preferred_batch_sizes=batching.preferred_batch_size,
        max_queue_size=batching.max_queue_size,
        default_timeout_ns=batching.default_timeout_microseconds * 1000,
        split_oversized=version.config.oversized_request == "split",
    )
