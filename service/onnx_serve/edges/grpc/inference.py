"""KServe V2 GRPCInferenceService with Triton's extensions. Thin: convert the message, call the data plane,
convert the answer, map a ServeError to its status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any

from onnx_serve.core.dataplane import DataPlane, InferResult
from onnx_serve.core.errors import ServeError
from onnx_serve.edges.grpc.common import ServicerContext, abort, answer_concurrently, deadline_ns, status_of, unary
from onnx_serve.edges.grpc.converters import (
    infer_response,
    input_decoder,
    model_metadata_response,
    parameter_values,
    requested_outputs,
    statistics_response,
)
from onnx_serve.edges.grpc.model_config import model_config_proto
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc

STREAM_MAX_INFLIGHT = 256


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: ServicerContext
                             ) -> pb.ServerMetadataResponse:
        metadata = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version,
                                         extensions=metadata.extensions)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: ServicerContext
                            ) -> pb.ModelMetadataResponse:
        return model_metadata_response(self.plane.model_metadata(request.name, request.version))

    @unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: ServicerContext) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=model_config_proto(self.plane.model_version(request.name,
                                                                                         request.version)))

    @unary
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: ServicerContext
                              ) -> pb.ModelStatisticsResponse:
        return statistics_response(self.plane.statistics(request.name, request.version))

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: ServicerContext
                              ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in self.plane.repository_index(ready_only=request.ready):
            response.models.add(name=entry.name, version=entry.version, state=entry.state.value,
                                reason=entry.reason)
        return response

    @unary
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: ServicerContext
                                  ) -> pb.RepositoryModelLoadResponse:
        await self.plane.load_model(request.model_name, dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @unary
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: ServicerContext
                                    ) -> pb.RepositoryModelUnloadResponse:
        await self.plane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: pb.ModelInferRequest, context: ServicerContext) -> pb.ModelInferResponse:
        try:  # not @unary: the hot path saves the wrapper's coroutine
            return infer_response(await self._infer(request, deadline_ns(context), "infer"))
        except ServeError as exc:
            await abort(context, exc)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: ServicerContext
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            result = await self._infer(request, None, "stream")
            return pb.ModelStreamInferResponse(infer_response=infer_response(result))

        async for response in answer_concurrently(request_iterator, answer, _stream_failure, STREAM_MAX_INFLIGHT):
            yield response

    def _infer(self, request: pb.ModelInferRequest, deadline: int | None, api: str
               ) -> Coroutine[Any, Any, InferResult]:
        # Returns the data plane's coroutine rather than awaiting it: one coroutine fewer per request.
        return self.plane.infer(request.model_name, request.model_version,
                                      input_decoder(request, self.plane.max_elements),
                                      requested_outputs(request) if request.outputs else (),
                                      deadline_ns=deadline, request_id=request.id,
                                      parameters=parameter_values(request.parameters) if request.parameters else None,
                                      api=api)


def _stream_failure(request: pb.ModelInferRequest, error: ServeError) -> pb.ModelStreamInferResponse:
    failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    return pb.ModelStreamInferResponse(error_message=status_of(error)[1], infer_response=failed)
