"""KServe V2 GRPCInferenceService with Triton's extensions. Thin: parse, validate, call the core, map errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from onnx_serve import __version__
from onnx_serve.core.codec import decode_input, to_raw
from onnx_serve.core.errors import InvalidArgument, ServeError
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import ModelVersion, Repository, State
from onnx_serve.core.stats import DURATION_FIELDS, Duration
from onnx_serve.edges.grpc.common import Call, answer_concurrently, deadline_ns, describe_failure
from onnx_serve.edges.grpc.model_config import model_config_proto
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc

EXTENSIONS = ("model_repository", "model_repository(unload_dependents)", "statistics", "model_configuration",
              "schedule_policy", "binary_tensor_data")
STREAM_MAX_INFLIGHT = 256
UNSUPPORTED_OUTPUT_PARAMETERS = {"classification", "shared_memory_region", "shared_memory_byte_size",
                                 "shared_memory_offset"}
INFER_PARAMETERS = {"timeout", "priority", "sequence_id", "sequence_start", "sequence_end", "binary_data_output"}


class Server:
    """State the servicers share: readiness, draining."""

    def __init__(self, repository: Repository, metrics: Metrics, max_elements: int) -> None:
        self.repository = repository
        self.metrics = metrics
        self.max_elements = max_elements
        self.draining = False
        self.started = False

    def ready(self) -> bool:
        return self.started and not self.draining and self.repository.all_ready()

    def call(self, api: str, request: Any) -> Call:
        """Starts the accounting of one request naming `request.model_name` (see Call)."""
        return Call(self.metrics, api, request.model_name, request.id,
                    model_known=request.model_name in self.repository.models)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.repository = server.repository

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="onnx-serve", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        # As Triton: an unknown, unloaded or failed model (or version) is simply not ready, not an error, so
        # readiness polls (tritonclient's is_model_ready) get False instead of an exception.
        try:
            return pb.ModelReadyResponse(ready=self.repository.get(request.name, request.version).ready)
        except ServeError:
            return pb.ModelReadyResponse(ready=False)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        version = await self._version(request.name, request.version, context)
        model = self.repository.models[request.name]
        response = pb.ModelMetadataResponse(name=version.name, platform="onnxruntime_onnx",
                                            versions=[str(v.version) for v in model.ready_versions()])
        for spec in version.signature.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in version.signature.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        version = await self._version(request.name, request.version, context)
        return pb.ModelConfigResponse(config=model_config_proto(version))

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        if request.name and request.name not in self.repository.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        response = pb.ModelStatisticsResponse()
        for name, model in sorted(self.repository.models.items()):
            if request.name and name != request.name:
                continue
            for number, version in sorted(model.versions.items()):
                if request.version and request.version != str(number):
                    continue
                if version.state is State.READY:
                    _fill_statistics(response.model_stats.add(), version)
        if request.version and not response.model_stats:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model '{request.name}' has no ready version '{request.version}'")
        return response

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.repository.index():
            if request.ready and state is not State.READY:
                continue
            response.models.add(name=name, version=version, state=state.value, reason=reason)
        return response

    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        if request.parameters:  # Triton's config / file:<path> overrides: refused rather than silently ignored
            names = ", ".join(sorted(request.parameters))[:200]
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"parameters: {names} not supported; models "
                                "load from the model repository as they are on disk")
        try:
            model = await self.repository.load(request.model_name)
        except ServeError as exc:
            await context.abort(*describe_failure(exc, "-", "RepositoryModelLoad"))
        if model.state is not State.READY:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"failed to load '{request.model_name}': {model.reason}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        try:
            await self.repository.unload(request.model_name)
        except ServeError as exc:
            await context.abort(*describe_failure(exc, "-", "RepositoryModelUnload"))
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        call = self.server.call("infer", request)
        return await call.answer_unary(self._infer(request, call, deadline_ns(context)), context)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async def answer(request: Any) -> pb.ModelStreamInferResponse:
            call = self.server.call("stream", request)

            async def work() -> pb.ModelStreamInferResponse:
                return pb.ModelStreamInferResponse(infer_response=await self._infer(request, call, None))

            def failure(code: grpc.StatusCode, message: str) -> pb.ModelStreamInferResponse:
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)

            return await call.answer_message(work(), failure)

        async for response in answer_concurrently(request_iterator, answer, STREAM_MAX_INFLIGHT):
            yield response

    async def _infer(self, request: Any, call: Call, deadline: int | None) -> pb.ModelInferResponse:
        version = self.repository.get(request.model_name, request.model_version)
        call.version = str(version.version)
        try:
            deadline = _parameter_deadline(request, deadline)
            wanted = requested_outputs(request, version)
            inputs = decode_request(request, version, self.server.max_elements)
            result = await version.infer(inputs, deadline)
            output_started = time.perf_counter_ns()
            call.batch_stages(result, output_started)
            response = encode_response(request, version, wanted, result.outputs)
            output_ns = time.perf_counter_ns() - output_started
        except BaseException:
            version.stats.request_failed(call.elapsed_ns)
            raise
        version.stats.request_succeeded(call.elapsed_ns, result.queue_ns, result.batch, output_ns)
        version.metrics.queue_duration.observe(result.queue_ns / 1e9)
        return response

    async def _version(self, name: str, version: str, context: Any) -> ModelVersion:
        try:
            return self.repository.get(name, version)
        except ServeError as exc:
            await context.abort(*describe_failure(exc, "-", "model lookup"))
            raise


def _parameter_deadline(request: Any, deadline: int | None) -> int | None:
    for key, value in request.parameters.items():
        if key not in INFER_PARAMETERS:
            raise InvalidArgument(f"parameters: unknown request parameter '{key}'")
        if key == "timeout":
            if value.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param") or (
                    value.int64_param < 0):
                raise InvalidArgument("parameters.timeout: expected a non-negative integer of microseconds")
            micros = value.int64_param or value.uint64_param
            if micros:
                at = time.monotonic_ns() + micros * 1000
                deadline = at if deadline is None else min(deadline, at)
    return deadline


def decode_request(request: Any, version: ModelVersion, max_elements: int) -> dict[str, np.ndarray]:
    specs = version.signature.input_by_name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"input '{tensor.name}': the model has no such input (it takes "
                                  f"{', '.join(specs)})")
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}': given twice")
        inputs[tensor.name] = decode_input(tensor, raw[i] if raw else None, spec, max_elements)
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise InvalidArgument(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return inputs


def requested_outputs(request: Any, version: ModelVersion) -> list[int]:
    """Indexes (in the model's output order) of the outputs to answer: the requested ones, or all."""
    index = version.signature.output_index
    if not request.outputs:
        return list(index.values())
    wanted = []
    for output in request.outputs:
        if output.name not in index:
            raise InvalidArgument(f"requested output '{output.name}': the model has no such output (it has "
                                  f"{', '.join(index)})")
        for key in output.parameters:  # answering the plain tensor instead would silently mislead the client
            if key in UNSUPPORTED_OUTPUT_PARAMETERS:
                raise InvalidArgument(f"requested output '{output.name}': parameter '{key}' is not supported "
                                      "(the classification and shared-memory extensions are not served)")
        wanted.append(index[output.name])
    return wanted


def encode_response(request: Any, version: ModelVersion, wanted: list[int], outputs: list[np.ndarray]
                    ) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=version.name, model_version=str(version.version), id=request.id)
    specs = version.signature.outputs
    for i in wanted:
        array = outputs[i]
        response.outputs.add(name=specs[i].name, datatype=specs[i].datatype, shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    return response


def _fill_statistics(out: Any, version: ModelVersion) -> None:
    stats = version.stats.snapshot()
    out.name, out.version = version.name, str(version.version)
    out.last_inference = stats.last_inference_ms
    out.inference_count = stats.inference_count
    out.execution_count = stats.execution_count
    for field_name in DURATION_FIELDS:
        _copy_duration(getattr(stats, field_name), getattr(out.inference_stats, field_name))
    for size, durations in sorted(stats.batches.items()):
        batch = out.batch_stats.add(batch_size=size)
        for field_name in ("compute_input", "compute_infer", "compute_output"):
            _copy_duration(getattr(durations, field_name), getattr(batch, field_name))


def _copy_duration(duration: Duration, target: Any) -> None:
    target.count, target.ns = duration.count, duration.ns
