"""ONNX Runtime sessions: execution providers (`auto`, or as asked with a visible fallback) and devices, options,
I/O signature, the I/O plan between what clients send and what the graph takes, and the pool of instances that
run batches in worker threads (ORT releases the GIL during run)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from onnx_serve.core.errors import ConfigError, InvalidArgument, ServeError
from onnx_serve.core.model_config import InstanceGroup, ModelConfig, SessionConfig
from onnx_serve.types import BY_ONNX_TYPE, DATATYPES, TensorSpec, example_shape, has_batch_axis

log = logging.getLogger(__name__)

_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# The providers that run on a device chosen by a `device_id` option (instance_group.gpus).
DEVICE_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                              "MIGraphXExecutionProvider"})
CPU_INSTANCE_COUNT = 2  # Triton's default count of a KIND_CPU instance group of the onnxruntime backend


# What `auto` (empty providers: the default) picks from, best first: those this onnxruntime build lists. TensorRT
# is left out on purpose: its engines take minutes to build at load and fail for many graphs, so it is asked for
# by name only.
AUTO_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


class ProviderUnavailable(ConfigError):
    """--strict-providers is on and a requested execution provider could not be used."""


class _AutoProviders:
    """`auto` resolved once per process, so that the choice is logged once (at the first model load, which is at
    server start) instead of per model, per reload, per instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # models load in worker threads
        self._chosen: tuple[str, ...] | None = None
        self._fallback_logged = False

    def get(self) -> tuple[str, ...]:
        with self._lock:
            if self._chosen is None:
                available = ort.get_available_providers()
                self._chosen = tuple(p for p in AUTO_PREFERENCE if p in available) or ("CPUExecutionProvider",)
                log.info("execution providers: %s (auto: the best of %s that this onnxruntime has; "
                         "--execution-providers chooses)", ", ".join(self._chosen), ", ".join(AUTO_PREFERENCE))
            return self._chosen

    def first_fallback(self) -> bool:
        """True once: the first session that `auto` did not get its providers for (onnxruntime-gpu lists CUDA
        on a host without a usable GPU)."""
        with self._lock:
            first, self._fallback_logged = not self._fallback_logged, True
            return first

    def reset(self) -> None:
        """Forgets the choice (tests)."""
        with self._lock:
            self._chosen, self._fallback_logged = None, False


auto_providers = _AutoProviders()


def resolve_providers(requested: Sequence[str]) -> tuple[str, ...]:
    """The providers to ask ONNX Runtime for: `requested`, or for none (`auto`) the best this build has."""
    return tuple(requested) if requested else auto_providers.get()


@dataclass(frozen=True, slots=True)
class SessionPlan:
    providers: tuple[str, ...]  # best first; () = auto (resolve_providers): no warning when one is missing
    strict_providers: bool
    options: SessionConfig
    intra_op_threads: int
    device_id: int | None = None  # the GPU of a device provider; None = the provider's default


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs clients see and send (with a config.pbtxt: its dims, in its order)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Class labels by output name (each output's label_filename), for the classification extension.
    output_labels: Mapping[str, Sequence[str]] = field(default_factory=dict, compare=False, repr=False)
    # Lookups the request path needs, built once per model version instead of per request.
    input_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_by_name", {spec.name: spec for spec in self.inputs})
        object.__setattr__(self, "output_index", {spec.name: i for i, spec in enumerate(self.outputs)})

    def has_batch_axis(self) -> bool:
        """Every input and output has a dynamic first axis: requests can be stacked along it."""
        return has_batch_axis(self.inputs + self.outputs)


def _spec(node: ort.NodeArg) -> TensorSpec:
    dt = BY_ONNX_TYPE.get(node.type)
    if dt is None:
        raise ConfigError(f"tensor '{node.name}' has type {node.type}, which onnx-serve cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, dt.name, shape)


def create_session(path: Path, plan: SessionPlan, *, warn: bool = True) -> tuple[ort.InferenceSession, list[str]]:
    """Creates one session; returns it with the providers it really got (ONNX Runtime silently falls
    back to CPU when, say, the CUDA provider's libraries fail to load, so we read them back). Providers asked
    for by name that it could not get are a warning (`warn`), or ProviderUnavailable under --strict-providers;
    with `auto` the choice fits the build, and a fallback after that is a warning once per process."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPTIMIZATION[plan.options.graph_optimization_level]
    options.intra_op_num_threads = plan.intra_op_threads
    options.inter_op_num_threads = plan.options.inter_op_threads or 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = plan.options.memory_arena
    spinning = "1" if plan.options.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.log_severity_level = 3

    available = set(ort.get_available_providers())
    explicit = bool(plan.providers)
    wanted = list(resolve_providers(plan.providers))
    missing = [p for p in wanted if p not in available]
    if missing and plan.strict_providers:
        raise ProviderUnavailable(f"execution provider(s) {', '.join(missing)} not available in this build of "
                                  f"onnxruntime (available: {', '.join(sorted(available))})")
    usable = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    chosen: list[str | tuple[str, dict[str, str]]] = [
        (p, {"device_id": str(plan.device_id)}) if plan.device_id is not None and p in DEVICE_PROVIDERS else p
        for p in usable]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # ORT raises its own exception types for corrupt graphs
        raise ConfigError(f"{path}: ONNX Runtime cannot load the model: {first_line(exc)}") from None
    got = session.get_providers()
    fell_back = [p for p in wanted if p not in got and p != "CPUExecutionProvider"]
    if fell_back:
        if plan.strict_providers:
            raise ProviderUnavailable(f"{path}: requested {', '.join(fell_back)} but the session runs on "
                                      f"{', '.join(got)}")
        if explicit and warn:
            log.warning("%s: execution provider %s unavailable, falling back to %s", path, ", ".join(fell_back),
                        ", ".join(got))
        elif not explicit and auto_providers.first_fallback():
            log.warning("execution provider %s is listed by this onnxruntime but cannot run here (no usable GPU or "
                        "libraries?): models on the auto providers run on %s", ", ".join(fell_back), ", ".join(got))
    return session, got


def create_sessions(path: Path, plan: SessionPlan, devices: Sequence[int | None]
                    ) -> tuple[list[ort.InferenceSession], list[str]]:
    """One session per model instance (`devices`, see instance_devices), with the providers the last one got;
    a fallback is logged once for the model, not once per instance."""
    sessions = []
    got: list[str] = []
    for index, device in enumerate(devices):
        session, got = create_session(path, replace(plan, device_id=device), warn=index == 0)
        sessions.append(session)
    return sessions, got


def first_line(exc: BaseException) -> str:
    """What a model failure's message says, for a status or a model's unavailable reason: ONNX Runtime's
    messages can run to pages, so the first line (at most 500 characters); an empty message, which some
    providers raise, is named by the exception's type."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def signature_of(session: ort.InferenceSession) -> Signature:
    return Signature(tuple(_spec(i) for i in session.get_inputs()), tuple(_spec(o) for o in session.get_outputs()))


def warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    """The default warm-up: one sample of zeros, "0" for BYTES (a string of digits, which a model that parses
    its strings as numbers, like Triton's simple_string, takes). The first run allocates arenas and picks
    kernels."""
    feeds = {}
    for spec in signature.inputs:
        shape = example_shape(spec)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "0", dtype=np.object_)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype].numpy)
    return feeds


def instance_devices(config: ModelConfig, providers: Sequence[str]) -> tuple[list[int | None],
                                                                             tuple[InstanceGroup, ...]]:
    """The device of each model instance to create (None: the providers' default) and config.pbtxt's instance
    groups resolved as Triton resolves them: KIND_AUTO is KIND_GPU when a device provider of `providers` is
    available, else KIND_CPU; count 0 is Triton's default (2 on the CPU, 1 per GPU); KIND_GPU without gpus
    runs on GPU 0. A config.yaml model has no groups: instance_count instances on the default device."""
    if not config.instance_groups:
        return [None] * config.instance_count, ()
    available = set(ort.get_available_providers())
    on_gpu = any(p in DEVICE_PROVIDERS and p in available for p in resolve_providers(providers))
    devices: list[int | None] = []
    resolved = []
    for group in config.instance_groups:
        kind = group.kind if group.kind != "KIND_AUTO" else ("KIND_GPU" if on_gpu else "KIND_CPU")
        count = group.count or (CPU_INSTANCE_COUNT if kind == "KIND_CPU" else 1)
        gpus = (group.gpus or (0,)) if kind == "KIND_GPU" else ()
        devices += [gpu for gpu in gpus for _ in range(count)] if gpus else [None] * count
        resolved.append(InstanceGroup(group.name, kind, count, gpus))
    return devices, tuple(resolved)


@dataclass(frozen=True, slots=True)
class Reshape:
    """Between a tensor's shape on one side (`source`, batch axis excluded) and the other (`target`); each -1
    of `target` takes, in order, the size of the array at the -1s of `source` (config.pbtxt's dims and
    reshape have their variable-size dimensions in matching runs, checked at load)."""

    source: tuple[int, ...]
    target: tuple[int, ...]

    def apply(self, array: np.ndarray, batched: bool) -> np.ndarray:
        tail = array.shape[1:] if batched else array.shape
        sizes = iter([size for size, want in zip(tail, self.source, strict=False) if want < 0])
        shape = tuple(next(sizes, 1) if want < 0 else want for want in self.target)
        return array.reshape((array.shape[0], *shape) if batched else shape)


@dataclass(frozen=True, slots=True)
class IOPlan:
    """What the runner does between the tensors clients see (config.pbtxt's dims) and the graph's: inputs
    reshaped to what the graph takes, the outputs the config names (in its order), reshaped back."""

    batched: bool  # the first axis is the batch axis (max_batch_size > 0), left as it is
    inputs: Mapping[str, Reshape]
    output_names: tuple[str, ...] | None  # None = every graph output, in graph order
    outputs: tuple[Reshape | None, ...]  # by position in the answer

    def run(self, session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        given = {name: reshape.apply(array, self.batched) if (reshape := self.inputs.get(name)) else array
                 for name, array in feeds.items()}
        results: list[np.ndarray] = session.run(self.output_names, given)
        if not any(self.outputs):
            return results
        return [r if reshape is None else reshape.apply(r, self.batched)
                for r, reshape in zip(results, self.outputs, strict=True)]


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray], plan: IOPlan | None
                ) -> list[np.ndarray]:
    """One run as a client sees it: through `plan` when there is one."""
    if plan is None:
        result: list[np.ndarray] = session.run(None, feeds)
        return result
    return plan.run(session, feeds)


class RunnerPool:
    """`count` model instances, each a session run by its own worker thread. The batcher takes an idle
    instance before it forms a batch, so batches form while the other instances are busy."""

    def __init__(self, sessions: Sequence[ort.InferenceSession], name: str, plan: IOPlan | None = None) -> None:
        self._sessions = list(sessions)
        self._plan = plan
        self._executor = ThreadPoolExecutor(max_workers=len(self._sessions), thread_name_prefix=f"ort-{name}")
        self._idle: asyncio.Queue[ort.InferenceSession] | None = None

    @property
    def count(self) -> int:
        return len(self._sessions)

    def _idle_queue(self) -> asyncio.Queue[ort.InferenceSession]:
        if self._idle is None:  # created lazily: it must belong to the running event loop
            self._idle = asyncio.Queue()
            for session in self._sessions:
                self._idle.put_nowait(session)
        return self._idle

    async def acquire(self) -> ort.InferenceSession:
        return await self._idle_queue().get()

    def release(self, session: ort.InferenceSession) -> None:
        self._idle_queue().put_nowait(session)

    def start(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray]
              ) -> asyncio.Future[tuple[list[np.ndarray], int]]:
        """Runs in a worker thread; the future gives every output (model order) and ORT's time in ns."""
        return asyncio.get_running_loop().run_in_executor(self._executor, _timed_run, session, feeds, self._plan)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)


def _timed_run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], plan: IOPlan | None
               ) -> tuple[list[np.ndarray], int]:
    start = time.perf_counter_ns()
    try:
        result = run_session(session, feeds, plan)
    except ort_errors.InvalidArgument as exc:
        raise InvalidArgument(f"the model rejected the input: {first_line(exc)}") from None
    except Exception as exc:  # a fault in the model or provider: reported, isolated to this model
        raise ServeError(f"model execution failed: {first_line(exc)}") from exc
    return result, time.perf_counter_ns() - start
