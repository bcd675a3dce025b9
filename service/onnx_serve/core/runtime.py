"""ONNX Runtime sessions: execution providers (with visible fallback), options, warm-up, I/O signature,
and the pool of instances that run batches in worker threads (ORT releases the GIL during run)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from onnx_serve.core.errors import ConfigError, InvalidArgument, ServeError
from onnx_serve.core.model_config import SessionConfig
from onnx_serve.types import BY_ONNX_TYPE, TensorSpec, example_feeds, has_batch_axis

log = logging.getLogger(__name__)

_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(ConfigError):
    """--strict-providers is on and a requested execution provider could not be used."""


@dataclass(frozen=True, slots=True)
class SessionPlan:
    providers: tuple[str, ...]
    strict_providers: bool
    options: SessionConfig
    intra_op_threads: int


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
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


def create_session(path: Path, plan: SessionPlan) -> tuple[ort.InferenceSession, list[str]]:
    """Creates one session; returns it with the providers it really got (ONNX Runtime silently falls
    back to CPU when, say, the CUDA provider's libraries fail to load, so we read them back)."""
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
    wanted = list(plan.providers)
    missing = [p for p in wanted if p not in available]
    if missing and plan.strict_providers:
        raise ProviderUnavailable(f"execution provider(s) {', '.join(missing)} not available in this build of "
                                  f"onnxruntime (available: {', '.join(sorted(available))})")
    usable = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=usable)
    except Exception as exc:  # ORT raises its own exception types for corrupt graphs
        raise ConfigError(f"{path}: ONNX Runtime cannot load the model: {first_line(exc)}") from None
    got = session.get_providers()
    fell_back = [p for p in wanted if p not in got and p != "CPUExecutionProvider"]
    if fell_back:
        if plan.strict_providers:
            raise ProviderUnavailable(f"{path}: requested {', '.join(fell_back)} but the session runs on "
                                      f"{', '.join(got)}")
        log.warning("%s: execution provider %s unavailable, falling back to %s", path, ", ".join(fell_back),
                    ", ".join(got))
    return session, got


def first_line(exc: BaseException) -> str:
    """What a model failure's message says, for a status or a model's unavailable reason: ONNX Runtime's
    messages can run to pages, so the first line (at most 500 characters); an empty message, which some
    providers raise, is named by the exception's type."""
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def signature_of(session: ort.InferenceSession) -> Signature:
    return Signature(tuple(_spec(i) for i in session.get_inputs()), tuple(_spec(o) for o in session.get_outputs()))


def warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    """Zeros (empty strings), one sample: the first run allocates arenas and picks kernels."""
    return example_feeds(signature.inputs)


class RunnerPool:
    """`count` model instances, each a session run by its own worker thread. The batcher takes an idle
    instance before it forms a batch, so batches form while the other instances are busy."""

    def __init__(self, sessions: Sequence[ort.InferenceSession], name: str) -> None:
        self._sessions = list(sessions)
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
        return asyncio.get_running_loop().run_in_executor(self._executor, _timed_run, session, feeds)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)


def _timed_run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
    start = time.perf_counter_ns()
    try:
        result = session.run(None, feeds)
    except ort_errors.InvalidArgument as exc:
        raise InvalidArgument(f"the model rejected the input: {first_line(exc)}") from None
    except Exception as exc:  # a fault in the model or provider: reported, isolated to this model
        raise ServeError(f"model execution failed: {first_line(exc)}") from exc
    return result, time.perf_counter_ns() - start
