"""The data plane: the one transport-neutral API that every edge (gRPC, HTTP, in-process Python) calls.

Inputs and outputs are plain Python and numpy values; every failure is a ServeError carrying its status
name. Each call pins its model version from lookup to answer (preprocessing included), so a reload never
retires a version under a request, and records its metrics, Triton-style statistics, spans and log lines
here, once (see accounting.py for the units).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from onnx_serve import __version__
from onnx_serve.core.accounting import CallRecord
from onnx_serve.core.admission import Admission
from onnx_serve.core.batching import BatchTiming, JobResult
from onnx_serve.core.classification import class_count, classified
from onnx_serve.core.codec import TensorSpec, check_arrays
from onnx_serve.core.errors import InvalidArgument, NotFound, ServeError
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import Repository, unknown_model
from onnx_serve.core.runtime import Signature
from onnx_serve.core.scheduling import DEFAULT_SCHEDULE, Schedule, scheduled
from onnx_serve.core.settings import cpu_quota
from onnx_serve.core.stats import ModelStats
from onnx_serve.core.version import ModelVersion, State
from onnx_serve.imaging import (
    LARGE_IMAGE_PIXELS,
    DecodingBudget,
    Prediction,
    decode_and_preprocess,
    image_from_pixels,
    preprocess,
    stored_pixels,
    top_k,
)

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("classification", "model_repository", "model_repository(unload_dependents)", "statistics",
              "model_configuration", "schedule_policy", "binary_tensor_data")
INFER_PARAMETERS = frozenset({"timeout", "priority", "sequence_id", "sequence_start", "sequence_end",
                              "binary_data_output"})
# Answering the plain tensor when one of these is asked for would silently mislead the client.
UNSUPPORTED_OUTPUT_PARAMETERS = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})

ParameterValue = bool | int | float | str
T = TypeVar("T")
InputDecoder = Callable[[Signature], dict[str, np.ndarray]]
"""Turns a wire request into model inputs, given the pinned version's signature (so edges decode once,
straight into the shapes and datatypes the model takes)."""


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferResult:
    model_name: str
    model_version: str
    request_id: str  # the id the client sent ("" when none)
    outputs: list[tuple[TensorSpec, np.ndarray]]  # the requested outputs, in the order asked (else model order)


@dataclass(frozen=True, slots=True)
class EncodedImage:
    data: bytes | bytearray | memoryview  # JPEG, PNG, ... as sent


@dataclass(frozen=True, slots=True)
class RawImage:
    data: bytes | bytearray | memoryview  # row-major uint8 pixels
    width: int
    height: int
    channels: int


ImageSource = EncodedImage | RawImage


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    model_name: str
    model_version: str
    request_id: str
    predictions: list[list[Prediction]]  # per image, the top-k best first


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]  # the ready ones
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class VersionStatistics:
    name: str
    version: str
    stats: ModelStats  # a snapshot


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str  # "" for a model with no loaded version
    state: State
    reason: str


class DataPlane:
    def __init__(self, repository: Repository, metrics: Metrics, max_elements: int) -> None:
        self.repository = repository
        self.metrics = metrics
        self.max_elements = max_elements  # the most elements one request may carry
        self.started = False  # set once the first load of the repository is done
        self.draining = False  # health reports NOT_SERVING (the drain delay), requests are still served
        self.admission = Admission()  # what the server's stop() uses to finish calls and refuse new ones
        # Pillow releases the GIL while decoding and resizing, so these threads run in parallel.
        self._preprocess_pool = ThreadPoolExecutor(max_workers=max(2, int(cpu_quota())),
                                                   thread_name_prefix="preprocess")
        # Large images (a photo, or a pixel bomb) take 0.1 s to seconds each: they decode one at a time in a lane
        # of their own, so that ordinary images never queue behind them.
        self._large_image_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess-large")
        self._decoding_budget = DecodingBudget(repository.settings.max_decoding_bytes)  # shared by those threads

    def close(self) -> None:
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._large_image_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------ health, metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        # --strict-readiness off (Triton's false): ready once started, whatever the models.
        strict = self.repository.settings.strict_readiness
        return self.started and not self.draining and (not strict or self.repository.all_ready())

    def model_readiness(self) -> dict[str, bool]:
        """Each loaded model's name and whether it serves (for per-model health): none does while draining."""
        return {name: model.state is State.READY and not self.draining
                for name, model in list(self.repository.models.items())}

    def model_ready(self, name: str, version: str = "") -> bool:
        # As Triton: an unknown, unloaded or failed model (or version) is simply not ready, not an error, so
        # readiness polls get False instead of an exception.
        try:
            return self.repository.get(name, version).ready
        except ServeError:
            return False

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(self.repository.settings.server_name, __version__, EXTENSIONS)

    def model_version(self, name: str, version: str = "") -> ModelVersion:
        """The version a call naming (name, version) is served by; raises NotFound / Unavailable."""
        return self.repository.get(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        chosen = self.repository.get(name, version)
        model = self.repository.models[name]
        return ModelMetadata(chosen.name, [str(v.version) for v in model.ready_versions()], PLATFORM,
                             chosen.signature.inputs, chosen.signature.outputs)

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Statistics of every ready version, or of one model, or of one version of it."""
        if name and name not in self.repository.models:
            raise unknown_model(name)
        found = []
        for model_name, model in sorted(self.repository.models.items()):
            if name and model_name != name:
                continue
            for number, chosen in sorted(model.versions.items()):
                if version and version != str(number):
                    continue
                if chosen.state is State.READY:
                    found.append(VersionStatistics(model_name, str(number), chosen.stats.snapshot()))
        if version and not found:
            raise NotFound(f"model '{name}' has no ready version '{version}'")
        return found

    # -------------------------------------------------------------------------------------------- repository

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return [IndexEntry(name, version, state, reason) for name, version, state, reason in self.repository.index()
                if not ready_only or state is State.READY]

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        self.repository.check_control_requests()  # --model-control-mode none and poll refuse it, as Triton
        if parameters:  # Triton's config / file:<path> overrides: refused rather than silently ignored
            names = ", ".join(sorted(parameters))[:200]
            raise InvalidArgument(f"parameters: {names} not supported; models load from the model repository as "
                                  "they are on disk")
        model = await self.repository.load(name)
        if model.state is not State.READY:
            raise InvalidArgument(f"failed to load '{name}': {model.reason}")

    async def unload_model(self, name: str) -> None:
        self.repository.check_control_requests()
        await self.repository.unload(name)

    # ------------------------------------------------------------------------------------ infer, classify

    # infer() and classify() are plain functions that return _served's coroutine: one coroutine per request
    # fewer than `async def` wrappers, on the path every request takes.

    async def _served(self, api: str, model: str, version: str, request_id: str,
                      work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One accounted call: looks the version up, pins it while `work(version, call, *args)` runs, and
        records the outcome once (a failure becomes the ServeError the edge answers with)."""
        call = CallRecord(self.metrics, api, model, request_id, model_known=model in self.repository.models)
        admission = self.admission
        try:
            if admission.refusing:
                await admission.refuse()
            chosen = self.repository.get(model, version)
            call.version = str(chosen.version)
            chosen.pin()
            admission.active += 1
            try:
                return await work(chosen, call, *args)
            finally:
                chosen.unpin()
                admission.call_ended()
        except BaseException as exc:
            raise call.failed(exc) from None
        finally:
            call.finish()


    def infer(self, model: str, version: str, inputs: Mapping[str, np.ndarray] | InputDecoder,
              outputs: Sequence[RequestedOutput] = (), *, deadline_ns: int | None = None, request_id: str = "",
              parameters: Mapping[str, ParameterValue] | None = None, api: str = "infer"
              ) -> Coroutine[Any, Any, InferResult]:
        """Runs one inference request through the model's batcher (await it). `inputs` are arrays by input
        name, or a decoder of the wire request; `deadline_ns` is on time.monotonic_ns()."""
        return self._served(api, model, version, request_id, self._infer, inputs, outputs, deadline_ns, parameters)

    async def _infer(self, version: ModelVersion, call: CallRecord, inputs: Mapping[str, np.ndarray] | InputDecoder,
                     outputs: Sequence[RequestedOutput], deadline_ns: int | None,
                     parameters: Mapping[str, ParameterValue] | None) -> InferResult:
        signature = version.signature
        try:
            schedule = _schedule(parameters) if parameters else DEFAULT_SCHEDULE
            wanted = requested_output_indexes(outputs, signature)
            # Triton's classification extension (core/classification.py): checked before the model runs.
            classes = [class_count(o.name, o.parameters, signature.outputs[i])
                       for o, i in zip(outputs, wanted, strict=True)] if outputs else ()
            if callable(inputs):
                arrays = inputs(signature)
            else:
                arrays = check_arrays(inputs, signature.inputs, self.max_elements)
            with scheduled(schedule):  # the request's priority and queue timeout, for the batcher
                result = await version.infer(arrays, deadline_ns)
            output_started = time.perf_counter_ns()
            call.batch_stages(result, output_started)
            specs = signature.outputs
            answered = [(specs[i], result.outputs[i]) for i in wanted]
            if any(classes):
                batched, labels = version.max_batch_size > 0, signature.output_labels
                answered = [classified(spec, array, n, batched, labels.get(spec.name) or version.labels) if n
                            else (spec, array) for (spec, array), n in zip(answered, classes, strict=True)]
            answer = InferResult(version.name, str(version.version), call.given_id, answered)
            output_ns = time.perf_counter_ns() - output_started
        except BaseException:
            version.stats.request_failed(call.elapsed_ns)
            raise
        version.stats.request_succeeded(call.elapsed_ns, result.queue_ns, result.batch, output_ns)
        version.metrics.queue_duration.observe(result.queue_ns / 1e9)
        return answer

    def classify(self, model: str, version: str, images: Sequence[ImageSource | None], top_k: int = 0, *,
                 deadline_ns: int | None = None, request_id: str = "", api: str = "classify"
                 ) -> Coroutine[Any, Any, ClassifyResult]:
        """Decodes and preprocesses each image in a worker thread (the images of one request in parallel),
        sends each through the batcher on its own (so images of different requests share batches), and
        answers the top-k labels per image; `top_k` 0 means the model's configured default. None stands for
        an image that carries no data, answered INVALID_ARGUMENT with its index."""
        return self._served(api, model, version, request_id, self._classify, images, top_k, deadline_ns)

    async def _classify(self, version: ModelVersion, call: CallRecord, images: Sequence[ImageSource | None], k: int,
                        deadline_ns: int | None) -> ClassifyResult:
        config = version.config
        try:
            if config.preprocess is None:
                raise InvalidArgument(f"model '{version.name}' has no preprocess section in its config.yaml, so "
                                      "it cannot classify images; send tensors with ModelInfer instead")
            if not images:
                raise InvalidArgument("images: the request holds no image")
            if len(images) > config.limits.max_images_per_request:
                raise InvalidArgument(f"images: {len(images)} images, above the limit of "
                                      f"{config.limits.max_images_per_request} per request")
            outcomes = await asyncio.gather(*(self._one_image(version, call, i, image, deadline_ns)
                                              for i, image in enumerate(images)), return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:  # the first bad image by index, whichever finished first, so the answer is repeatable
                raise failures[0]
            results = [o for o in outcomes if isinstance(o, JobResult)]
            scores = np.concatenate([r.outputs[0] for r in results])
            predictions = top_k(scores, k or config.postprocess.top_k, config.postprocess.softmax, version.labels)
        except BaseException:
            version.stats.request_failed(call.elapsed_ns)
            raise
        queue_ns = max(r.queue_ns for r in results)  # the images queued side by side: the longest wait counts
        version.stats.request_succeeded(call.elapsed_ns, queue_ns, _charged_batches(results), 0)
        version.metrics.queue_duration.observe(queue_ns / 1e9)
        return ClassifyResult(version.name, str(version.version), call.given_id, predictions)

    async def _one_image(self, version: ModelVersion, call: CallRecord, index: int, image: ImageSource | None,
                         deadline_ns: int | None) -> JobResult:
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        try:
            large = isinstance(image, EncodedImage) and stored_pixels(image.data) > LARGE_IMAGE_PIXELS
            pool = self._large_image_pool if large else self._preprocess_pool
            tensor = await loop.run_in_executor(pool, _prepare, version, image, self._decoding_budget)
        except ServeError as exc:
            raise type(exc)(f"image {index}: {exc}") from None
        prepared = time.perf_counter_ns()
        version.metrics.preprocess_duration.observe((prepared - started) / 1e9)
        call.stage("preprocess", started, prepared)
        result = await version.infer({version.signature.inputs[0].name: tensor[np.newaxis]}, deadline_ns)
        call.batch_stages(result, time.perf_counter_ns())
        return result


def _prepare(version: ModelVersion, image: ImageSource | None, budget: DecodingBudget) -> np.ndarray:
    """Blocking (runs in the preprocess pool): decode and transform one image into the model's input. None is
    an image that carries no data (an empty oneof on the wire)."""
    config, limits = version.config, version.config.limits
    if image is None:
        raise InvalidArgument("neither encoded bytes nor raw pixels given")
    assert config.preprocess is not None  # its fit to the model's input was checked at load
    if isinstance(image, EncodedImage):
        return decode_and_preprocess(image.data, limits, config.preprocess, budget)
    decoded = image_from_pixels(image.data, image.width, image.height, image.channels, limits)
    return preprocess(decoded, config.preprocess)


def _charged_batches(results: Sequence[JobResult]) -> BatchTiming:
    """What a request whose samples ran in several batches is charged: each distinct batch once."""
    batches = list({id(r.batch): r.batch for r in results}.values())
    if len(batches) == 1:
        return batches[0]
    return BatchTiming(sum(b.batch_size for b in batches), sum(b.compute_input_ns for b in batches),
                       sum(b.compute_infer_ns for b in batches))


def _schedule(parameters: Mapping[str, ParameterValue]) -> Schedule:
    """Triton's schedule policy parameters: `priority` (1 is the highest level; 0 the model's default) and
    `timeout` (microseconds in the queue, applied as the model's queue policy allows: core/batching.py)."""
    values = {"priority": 0, "timeout": 0}
    for key, value in parameters.items():
        if key not in INFER_PARAMETERS:
            raise InvalidArgument(f"parameters: unknown request parameter '{key}'")
        if key in values:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                unit = " of microseconds" if key == "timeout" else ""
                raise InvalidArgument(f"parameters.{key}: expected a non-negative integer{unit}")
            values[key] = value
    return Schedule(priority=values["priority"], timeout_us=values["timeout"])


def requested_output_indexes(outputs: Sequence[RequestedOutput], signature: Signature) -> list[int]:
    """Indexes (in the model's output order) of the outputs to answer: the requested ones, or all."""
    index = signature.output_index
    if not outputs:
        return list(index.values())
    wanted: list[int] = []
    for output in outputs:
        if output.name not in index:
            raise InvalidArgument(f"requested output '{output.name}': the model has no such output (it has "
                                  f"{', '.join(index)})")
        if index[output.name] in wanted:  # one answer per request: duplicates would amplify the response
            raise InvalidArgument(f"requested output '{output.name}': asked for twice")
        for key in output.parameters:
            if key in UNSUPPORTED_OUTPUT_PARAMETERS:
                raise InvalidArgument(f"requested output '{output.name}': parameter '{key}' is not supported "
                                      "(the shared-memory extensions are not served)")
        wanted.append(index[output.name])
    return wanted
