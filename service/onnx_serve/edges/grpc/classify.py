"""The ImageClassifier API: encoded images in, top-k labels out. Each image is decoded and preprocessed in
a worker thread (images of one request in parallel) and goes through the model's batcher on its own, so
images from different requests share batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from onnx_serve.core.errors import InvalidArgument, ServeError
from onnx_serve.core.repository import ModelVersion
from onnx_serve.core.settings import cpu_quota
from onnx_serve.edges.grpc.common import Call, answer_concurrently, deadline_ns
from onnx_serve.edges.grpc.inference import Server
from onnx_serve.imaging import decode_image, image_from_pixels, preprocess, top_k
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2_grpc as pb_grpc

STREAM_MAX_INFLIGHT = 64


class ClassifyServicer(pb_grpc.ImageClassifierServicer):
    def __init__(self, server: Server) -> None:
        self.server = server
        # Pillow releases the GIL while decoding and resizing, so these threads run in parallel.
        self.pool = ThreadPoolExecutor(max_workers=max(2, int(cpu_quota())), thread_name_prefix="preprocess")

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        call = self.server.call("classify", request)
        return await call.answer_unary(self._classify(request, call, deadline_ns(context)), context)

    async def ClassifyStream(self, request_iterator: AsyncIterator[Any], context: Any
                             ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async def answer(request: Any) -> pb.ClassifyStreamResponse:
            call = self.server.call("classify", request)

            async def work() -> pb.ClassifyStreamResponse:
                return pb.ClassifyStreamResponse(response=await self._classify(request, call, None))

            def failure(code: grpc.StatusCode, message: str) -> pb.ClassifyStreamResponse:
                failed = pb.ClassifyResponse(model_name=request.model_name, id=request.id)
                return pb.ClassifyStreamResponse(error_message=message, error_code=code.name, response=failed)

            return await call.answer_message(work(), failure)

        async for response in answer_concurrently(request_iterator, answer, STREAM_MAX_INFLIGHT):
            yield response

    async def _classify(self, request: Any, call: Call, deadline: int | None) -> pb.ClassifyResponse:
        version = self.server.repository.get(request.model_name, request.model_version)
        call.version = str(version.version)
        config = version.config
        if config.preprocess is None:
            raise InvalidArgument(f"model '{version.name}' has no preprocess section in its config.yaml, so it "
                                  "cannot classify images; send tensors with ModelInfer instead")
        count = len(request.images)
        if count == 0:
            raise InvalidArgument("images: the request holds no image")
        if count > config.limits.max_images_per_request:
            raise InvalidArgument(f"images: {count} images, above the limit of "
                                  f"{config.limits.max_images_per_request} per request")
        k = request.top_k or config.postprocess.top_k
        outcomes = await asyncio.gather(*(self._one_image(version, call, i, image, deadline)
                                          for i, image in enumerate(request.images)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:  # the first bad image by index, whichever finished first, so the answer is repeatable
            version.stats.request_failed(call.elapsed_ns)
            raise failures[0]
        scores = outcomes
        predictions = top_k(np.concatenate(scores), k, config.postprocess.softmax, version.labels)
        response = pb.ClassifyResponse(model_name=version.name, model_version=str(version.version), id=request.id)
        for row in predictions:
            result = response.results.add()
            for p in row:
                result.predictions.add(label=p.label, index=p.index, score=p.score)
        return response

    async def _one_image(self, version: ModelVersion, call: Call, index: int, image: Any, deadline: int | None
                         ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        try:
            tensor = await loop.run_in_executor(self.pool, _prepare, version, image)
        except ServeError as exc:
            raise type(exc)(f"image {index}: {exc}") from None
        prepared = time.perf_counter_ns()
        version.metrics.preprocess_duration.observe((prepared - started) / 1e9)
        call.stage("preprocess", started, prepared)
        name = version.signature.inputs[0].name
        result = await version.infer({name: tensor[np.newaxis]}, deadline)
        call.batch_stages(result, time.perf_counter_ns())
        version.stats.request_succeeded(time.perf_counter_ns() - started, result.queue_ns, result.batch, 0)
        version.metrics.queue_duration.observe(result.queue_ns / 1e9)
        return result.outputs[0]


def _prepare(version: ModelVersion, image: Any) -> np.ndarray:
    """Blocking (runs in the preprocess pool): decode and transform one image into the model's input."""
    config, limits = version.config, version.config.limits
    source = image.WhichOneof("source")
    if source == "encoded":
        decoded = decode_image(image.encoded, limits)
    elif source == "pixels":
        p = image.pixels
        decoded = image_from_pixels(p.data, p.width, p.height, p.channels, limits)
    else:
        raise InvalidArgument("neither encoded bytes nor raw pixels given")
    assert config.preprocess is not None  # its fit to the model's input was checked at load
    return preprocess(decoded, config.preprocess)
