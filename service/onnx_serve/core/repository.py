"""The model repository: models/<name>/<version>/model.onnx with an optional models/<name>/config.yaml (ours)
or config.pbtxt (Triton's, read as it is: core/triton_config.py).

Each model version is loaded on its own (sessions created and warmed up in a worker thread) and is READY
or UNAVAILABLE with a reason; a broken model never affects the others. A reload loads the new versions
first and swaps them in atomically, then drains the old ones, so requests never see a gap; a version that
fails to load replaces nothing that serves (Repository.load).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from onnx_serve.core.autocomplete import complete
from onnx_serve.core.batching import Batcher
from onnx_serve.core.errors import ConfigError, InvalidArgument, NotFound, ServeError, Unavailable
from onnx_serve.core.metrics import Metrics, bounded
from onnx_serve.core.model_config import ModelConfig
from onnx_serve.core.model_control import Poller, check_requests_allowed, startup_models
from onnx_serve.core.runtime import RunnerPool, SessionPlan, create_sessions, instance_devices, signature_of
from onnx_serve.core.scheduling import BatchPolicy, batch_policy
from onnx_serve.core.settings import Settings, default_intra_op_threads
from onnx_serve.core.triton_config import read_model_config
from onnx_serve.core.version import Model, ModelVersion, State, VersionObserver
from onnx_serve.core.warmup import warm_up, warmup_requests
from onnx_serve.imaging import load_labels

log = logging.getLogger(__name__)
MODEL_FILENAME = "model.onnx"
VERSION_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: int() also takes "٣" and refuses 5000 digits


class Repository:
    def __init__(self, root: Path, settings: Settings, metrics: Metrics) -> None:
        self.root = root
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.listeners: list[Callable[[], Awaitable[None]]] = []  # told after every load and unload
        self._poller: Poller | None = None  # --model-control-mode poll, once load_all has started it

    async def _changed(self) -> None:
        for listener in self.listeners:
            await listener()

    def scan(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        if (single := self._single_model()) is not None:
            return [single]
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_all(self) -> None:
        """The start-up load, as --model-control-mode says (core/model_control.py); in poll mode it then starts
        polling the repository."""
        if self.settings.model_control_mode == "poll":
            self._poller = Poller(self, self.settings.repository_poll_s)
            names = await self._poller.snapshot()
        else:
            names = self.scan()
        chosen, missing = startup_models(self.settings, names)
        for name in missing:  # the CLI refuses to start with these; a Server made in Python logs them
            log.error("--load-model %s: not in the model repository %s", name, self.root)
        await asyncio.gather(*(self.load(name) for name in chosen))
        if self._poller is not None:
            self._poller.start()

    async def reload_all(self) -> None:
        """SIGHUP: reload every model present on disk (under --model-control-mode explicit, every loaded one),
        unload the ones that disappeared."""
        names = set(self.scan())
        if self.settings.model_control_mode == "explicit":
            names &= set(self.models)
        await asyncio.gather(*(self.unload(name) for name in set(self.models) - names))
        await asyncio.gather(*(self.load(name) for name in sorted(names)))

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load(self, name: str) -> Model:
        """Loads (or reloads) a model. No failed reload changes what serves: each serving version keeps serving,
        READY, until its replacement has loaded and warmed up.

        A reload loads the versions its version_policy chooses beside the serving ones, then installs, per
        version number, the new version if it is READY, else the serving one of that number (if any), else
        the failed new one (UNAVAILABLE with its reason). Serving versions the policy no longer chooses are
        retired once at least one new version is READY; when none is (config.yaml does not parse, or every
        chosen version failed), they all serve on. A first load, or a reload of a model that serves nothing,
        installs what it loaded, as it is: a failed one leaves the model UNAVAILABLE.

        A failed attempt is reported in the log (ERROR), in onnx_serve_model_load_failures_total{model} and
        in the index: a serving version kept past it stays READY, with the reason
        "reload failed, still serving the previous load: <why>"; a new version that failed is its own
        UNAVAILABLE row; the installed Model's reason is the attempt's reason.

        Returns the model as installed, except when the attempt brought no version READY while previous
        versions serve on: then the attempt itself (not installed; UNAVAILABLE, with the reason), so the
        caller (RepositoryModelLoad) reports the failure although the model still serves.
        """
        directory = self.root if name == self._single_model() else self.root / name
        if not self.on_disk(name):
            raise NotFound(f"model '{name}' is not in the model repository")
        async with self._lock(name):
            started = time.perf_counter()
            attempt = Model(name, directory)
            previous = self.models.get(name)
            if previous is None:
                self.models[name] = attempt  # LOADING in the index until it is installed
            serving = {} if previous is None else {v.version: v for v in previous.ready_versions()}
            try:
                config = read_model_config(directory, name)
                numbers = sorted(int(p.name) for p in directory.iterdir()
                                 if p.is_dir() and VERSION_NUMBER.fullmatch(p.name))
                if not numbers:
                    raise ConfigError(f"{directory}: no version directories (expected {name}/1/{MODEL_FILENAME})")
                chosen = config.version_policy.select(numbers)
                if not chosen:
                    raise ConfigError(f"{directory}: version_policy selects none of the versions {numbers}")
                loaded = await asyncio.gather(*(self._load_version(name, directory, v, config,
                                                                   mark_loading=v not in serving) for v in chosen))
                attempt.versions = {v.version: v for v in loaded}
                attempt.state = State.READY if attempt.ready_versions() else State.UNAVAILABLE
                attempt.reason = "; ".join(v.reason for v in loaded if not v.ready)
            except ConfigError as exc:
                attempt.state, attempt.reason = State.UNAVAILABLE, str(exc)
            failed = [v for v in attempt.versions.values() if not v.ready]
            failures = self.metrics.model_load_failures.labels(bounded(name))  # at 0 from the first load on
            if failed or attempt.state is not State.READY:
                attempt.reason = attempt.reason or "failed to load"
                failures.inc()
            installed = self._installed(attempt, serving)
            kept = [n for n, v in installed.versions.items() if serving.get(n) is v]
            if installed.state is State.UNAVAILABLE:
                log.error("model %s unavailable: %s", name, installed.reason)
            else:
                for version in failed:
                    if version.version not in kept:
                        log.error("model %s version %d unavailable: %s", name, version.version, version.reason)
                if kept:
                    log.error("model %s: reload failed, still serving the previous load of version(s) %s: %s",
                              name, ",".join(map(str, kept)), attempt.reason)
                if attempt.state is State.READY:
                    log.info("model %s ready: versions %s in %.2fs", name,
                             ",".join(str(v.version) for v in attempt.ready_versions()), time.perf_counter() - started)
            self.models[name] = installed
            for version in installed.versions.values():  # the ready gauge says what serves now
                version.metrics.set_ready(version.ready, version.providers)
            if previous is not None and previous is not installed:
                await self._retire(previous, keep=installed)
            # The failed versions a serving one stood in for are not closed: only READY ones hold sessions.
        await self._changed()
        return installed if installed is attempt or attempt.state is State.READY else attempt

    @staticmethod
    def _installed(attempt: Model, serving: dict[int, ModelVersion]) -> Model:
        """What a load installs (see load): the attempt, with the serving versions it failed to replace (or,
        when it brought none READY, every serving version) merged in, READY, noted as kept."""
        if not attempt.reason:
            return attempt
        versions = dict(attempt.versions)
        kept = [old for number, old in serving.items()
                if not (versions[number].ready if number in versions else attempt.state is State.READY)]
        if not kept:
            return attempt
        for old in kept:
            old.reason = f"reload failed, still serving the previous load: {attempt.reason}"
            versions[old.version] = old
        return Model(attempt.name, attempt.directory, dict(sorted(versions.items())), State.READY, attempt.reason)

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            model = self.models.pop(name, None)
            if model is None:
                raise NotFound(f"model '{name}' is not loaded")
            await self._retire(model)
            log.info("model %s unloaded", name)
        await self._changed()

    async def _retire(self, model: Model, keep: Model | None = None) -> None:
        """Closes the versions of `model` that `keep` (the model now installed) does not hold; a version whose
        number `keep` still has leaves its metric series to the one serving under that number."""
        kept = {} if keep is None else keep.versions
        await asyncio.gather(*(v.close(forget_metrics=n not in kept) for n, v in model.versions.items()
                               if kept.get(n) is not v))

    async def close(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
        for name in list(self.models):
            await self.unload(name)

    async def _load_version(self, name: str, directory: Path, number: int, config: ModelConfig, *,
                            mark_loading: bool = True) -> ModelVersion:
        """Loads one version; load() sets its ready gauge once it is installed. `mark_loading` sets the gauge
        to 0 meanwhile, which load() does only for a number nothing serves under (the series is shared)."""
        path = directory / str(number) / config.model_filename  # config.pbtxt's default_model_filename
        version = ModelVersion(name, number, path, config, self.metrics.for_version(name, str(number)))
        if mark_loading:
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
        return version

    def _create_runtime(self, version: ModelVersion) -> None:
        """Blocking: creates and warms up the sessions, so it runs in a worker thread. The config, completed
        from the graph (core/autocomplete.py), replaces version.config: ModelConfig answers what serves."""
        config, settings = version.config, self.settings
        providers = config.execution_providers or settings.execution_providers
        devices, groups = instance_devices(config, providers)
        plan = SessionPlan(
            providers=providers,
            strict_providers=settings.strict_providers,
            options=config.session,
            intra_op_threads=config.session.intra_op_threads or settings.intra_op_threads
            or default_intra_op_threads(settings.workers, len(devices)),
        )
        sessions, got = create_sessions(version.path, plan, devices)
        version.providers = tuple(got)
        model_dir, where = version.path.parent.parent, str(version.path)
        served = complete(config, signature_of(sessions[0]), model_dir, where)
        version.config = dataclasses.replace(served.config, instance_count=len(devices), instance_groups=groups)
        version.signature = served.signature
        version.max_batch_size = version.config.max_batch_size or 0
        if config.labels:
            version.labels = load_labels(model_dir / config.labels)
        if config.preprocess is not None:
            _check_preprocess_fits(version)
        requests = warmup_requests(version.config, version.signature, model_dir, where)
        for session in sessions:
            warm_up(session, requests, served.plan, where)
        version.runners = RunnerPool(sessions, f"{version.name}-{version.version}", served.plan)

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the one asked for, else the latest READY one."""
        model = self.models.get(name)
        if model is None:
            if self.on_disk(name):  # in the repository but unloaded (or not loaded yet)
                raise Unavailable(f"model '{name}' is not loaded")
            raise unknown_model(name) if name else NotFound("no model name given")
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
            single = self._single_model()
            return name == single if single is not None else (self.root / name).is_dir()
        except (OSError, ValueError):  # a name too long for the file system, or with a NUL byte
            return False

    def _single_model(self) -> str | None:
        """--model-name's model when the root is that one model's directory (<root>/1/model.onnx, the config beside
        1/: how KServe's storage initializer lays out /mnt/models), else None: a directory per model."""
        name = self.settings.model_name
        if not name or not self.root.is_dir():
            return None
        return name if any(p.is_dir() and VERSION_NUMBER.fullmatch(p.name) for p in self.root.iterdir()) else None

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
        # Under explicit control, loading nothing at start is a choice, not a failure (Triton is ready then).
        loaded_some = bool(self.models) or self.settings.model_control_mode == "explicit"
        return loaded_some and all(m.state is State.READY for m in self.models.values())

    def check_control_requests(self) -> None:
        """Raises Unavailable when --model-control-mode refuses load and unload requests (none, poll)."""
        check_requests_allowed(self.settings)

    def directory(self, name: str) -> Path:
        """Where model `name` lives: its directory, or the root itself in the single-model layout."""
        return self.root if name == self._single_model() else self.root / name


def unknown_model(name: str) -> NotFound:
    # Triton's words: its clients check that the message starts "Request for unknown model".
    return NotFound(f"Request for unknown model: '{name}' is not found")


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


def _policy(version: ModelVersion) -> BatchPolicy:
    return batch_policy(version.config.dynamic_batching, version.max_batch_size,
                        split_oversized=version.config.oversized_request == "split")
