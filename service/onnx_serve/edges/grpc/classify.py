"""The ImageClassifier API: encoded images in, top-k labels out. Thin: the data plane decodes, preprocesses,
batches and accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any

from onnx_serve.core.dataplane import ClassifyResult, DataPlane
from onnx_serve.core.errors import ServeError
from onnx_serve.edges.grpc.common import ServicerContext, abort, answer_concurrently, deadline_ns, status_of
from onnx_serve.edges.grpc.converters import classify_response, image_sources
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2_grpc as pb_grpc

STREAM_MAX_INFLIGHT = 64


class ClassifyServicer(pb_grpc.ImageClassifierServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Classify(self, request: pb.ClassifyRequest, context: ServicerContext) -> pb.ClassifyResponse:
        try:  # not @unary: the hot path saves the wrapper's coroutine
            return classify_response(await self._classify(request, deadline_ns(context)))
        except ServeError as exc:
            await abort(context, exc)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: ServicerContext
                             ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async def answer(request: pb.ClassifyRequest) -> pb.ClassifyStreamResponse:
            return pb.ClassifyStreamResponse(response=classify_response(await self._classify(request, None)))

        async for response in answer_concurrently(request_iterator, answer, _stream_failure, STREAM_MAX_INFLIGHT):
            yield response

    def _classify(self, request: pb.ClassifyRequest, deadline: int | None) -> Coroutine[Any, Any, ClassifyResult]:
        # Returns the data plane's coroutine rather than awaiting it: one coroutine fewer per request.
        return self.plane.classify(request.model_name, request.model_version, image_sources(request),
                                         request.top_k, deadline_ns=deadline, request_id=request.id)


def _stream_failure(request: pb.ClassifyRequest, error: ServeError) -> pb.ClassifyStreamResponse:
    code, message = status_of(error)
    failed = pb.ClassifyResponse(model_name=request.model_name, id=request.id)
    return pb.ClassifyStreamResponse(error_message=message, error_code=code.name, response=failed)
