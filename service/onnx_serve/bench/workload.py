"""What the bench sends: one request per API, built once from the model's metadata and serialized once.

The load generator sends the same bytes again and again (perf_analyzer does the same by default), so the
client spends its CPU on gRPC, not on building protobufs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as cpb
from onnx_serve.types import DATATYPES, TensorSpec, example_array, example_shape, has_batch_axis, to_raw

V2_SERVICE = "/inference.GRPCInferenceService/"
CLASSIFY_SERVICE = "/onnxserve.v1.ImageClassifier/"
APIS = ("infer", "stream", "classify", "classify-stream")
STREAM_ERROR = "STREAM_ERROR"  # a V2 stream answer carries a message but no status code

# Parses one stream answer into (request id, error code or None).
StreamParser = Callable[[bytes], tuple[str, str | None]]


@dataclass(slots=True)
class Workload:
    """One request message, reused for every call of a level."""

    api: str
    method: str  # full gRPC method path
    streaming: bool
    items_per_request: int
    request: Any  # ModelInferRequest or ClassifyRequest; both have an `id` field
    response_type: Any
    describe: str  # what one request carries, for the report

    def payload(self, request_id: str = "") -> bytes:
        self.request.id = request_id
        return self.request.SerializeToString()

    def message(self, request_id: str = "") -> Any:
        copy = type(self.request)()
        copy.CopyFrom(self.request)
        copy.id = request_id
        return copy

    def stream_parser(self) -> StreamParser:
        if self.api == "stream":
            def parse_v2(data: bytes) -> tuple[str, str | None]:
                answer = pb.ModelStreamInferResponse.FromString(data)
                return answer.infer_response.id, STREAM_ERROR if answer.error_message else None
            return parse_v2

        def parse_classify(data: bytes) -> tuple[str, str | None]:
            answer = cpb.ClassifyStreamResponse.FromString(data)
            failed = answer.error_code or (STREAM_ERROR if answer.error_message else "")
            return answer.response.id, failed or None
        return parse_classify


def parse_shape_overrides(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape input:1,28,28` -> {"input": (1, 28, 28)}."""
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        if not sep or not name:
            raise ValueError(f"--shape {value!r}: expected NAME:D1,D2,...")
        shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
    return shapes


def inputs_from_metadata(metadata: pb.ModelMetadataResponse) -> list[TensorSpec]:
    return [TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in metadata.inputs]


def infer_workload(model: str, version: str, inputs: Sequence[TensorSpec], batch_size: int, streaming: bool,
                   overrides: dict[str, tuple[int, ...]] | None = None, arrays: Sequence[Path] = (),
                   seed: int = 0) -> Workload:
    """A ModelInferRequest with random data shaped from the metadata, or with arrays from .npy files (one per
    input, in the model's input order)."""
    if not inputs:
        raise ValueError(f"model {model!r} reports no inputs")
    batched = has_batch_axis(inputs)
    if batch_size != 1 and not batched:
        raise ValueError(f"model {model!r} has no batch axis (input shapes {[list(s.shape) for s in inputs]}): "
                         "use --batch-size 1")
    if arrays and len(arrays) != len(inputs):
        raise ValueError(f"model {model!r} has {len(inputs)} input(s); got {len(arrays)} .npy file(s)")
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    items = batch_size if batched else 1
    for index, spec in enumerate(inputs):
        if arrays:
            array = np.load(arrays[index], allow_pickle=False).astype(DATATYPES[spec.datatype].numpy, copy=False)
            shape, raw = tuple(array.shape), np.ascontiguousarray(array).tobytes()
            items = shape[0] if batched and shape else 1
        else:
            shape = overrides[spec.name] if overrides and spec.name in overrides else example_shape(spec, batch_size)
            raw = to_raw(example_array(spec.datatype, shape, rng))
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        request.raw_input_contents.append(raw)
    described = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in request.inputs)
    method = V2_SERVICE + ("ModelStreamInfer" if streaming else "ModelInfer")
    return Workload("stream" if streaming else "infer", method, streaming, items, request,
                    pb.ModelStreamInferResponse if streaming else pb.ModelInferResponse, described)


def random_image(inputs: Sequence[TensorSpec], seed: int = 0) -> bytes:
    """A PNG of noise at the model's input size (NCHW or NHWC guessed from where the 1 or 3 channels are)."""
    from PIL import Image

    shape = inputs[0].shape if inputs else ()
    dims = [d if d > 0 else 224 for d in shape[-3:]] if len(shape) >= 3 else [3, 224, 224]
    channels, height, width = dims if dims[0] in (1, 3, 4) else (dims[2], dims[0], dims[1])
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3) if channels != 1 else (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def classify_workload(model: str, version: str, images: Sequence[bytes], batch_size: int, streaming: bool,
                      top_k: int = 0) -> Workload:
    if not images:
        raise ValueError("classify needs at least one image")
    request = cpb.ClassifyRequest(model_name=model, model_version=version, top_k=top_k)
    for index in range(batch_size):
        request.images.add(encoded=images[index % len(images)])
    sizes = sorted({len(image) for image in images})
    described = f"{batch_size} encoded image(s) per request, {sizes[0]}-{sizes[-1]} bytes each"
    method = CLASSIFY_SERVICE + ("ClassifyStream" if streaming else "Classify")
    return Workload("classify-stream" if streaming else "classify", method, streaming, batch_size, request,
                    cpb.ClassifyStreamResponse if streaming else cpb.ClassifyResponse, described)
