"""gRPC messages <-> the data plane's plain Python and numpy values, in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from onnx_serve.core.codec import check_none_missing, decode_input, model_input
from onnx_serve.core.dataplane import (
    ClassifyResult,
    EncodedImage,
    ImageSource,
    InferResult,
    ModelMetadata,
    ParameterValue,
    RawImage,
    RequestedOutput,
    VersionStatistics,
)
from onnx_serve.core.errors import InvalidArgument
from onnx_serve.core.runtime import Signature
from onnx_serve.core.stats import DURATION_FIELDS, Duration
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as cpb
from onnx_serve.types import to_raw

# ---------------------------------------------------------------------------------------------- KServe V2


def input_decoder(request: pb.ModelInferRequest, max_elements: int) -> Callable[[Signature], dict[str, np.ndarray]]:
    """Decodes the request's tensors once the data plane has pinned the version (and so its signature)."""
    return lambda signature: decode_request(request, signature, max_elements)


def decode_request(request: pb.ModelInferRequest, signature: Signature, max_elements: int
                   ) -> dict[str, np.ndarray]:
    specs = signature.input_by_name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = model_input(specs, tensor.name)
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}': given twice")
        inputs[tensor.name] = decode_input(tensor, raw[i] if raw else None, spec, max_elements)
    check_none_missing(specs, inputs)
    return inputs


def parameter_values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    values: dict[str, ParameterValue] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else ""
    return values


def requested_outputs(request: pb.ModelInferRequest) -> list[RequestedOutput]:
    return [RequestedOutput(output.name, parameter_values(output.parameters)) for output in request.outputs]


def infer_response(result: InferResult) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version,
                                     id=result.request_id)
    for spec, array in result.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        response.raw_output_contents.append(to_raw(array))
    return response


def model_metadata_response(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=metadata.name, platform=metadata.platform, versions=metadata.versions)
    for spec in metadata.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    for spec in metadata.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    return response


def statistics_response(found: list[VersionStatistics]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for entry in found:
        out, stats = response.model_stats.add(), entry.stats
        out.name, out.version = entry.name, entry.version
        out.last_inference = stats.last_inference_ms
        out.inference_count = stats.inference_count
        out.execution_count = stats.execution_count
        for field_name in DURATION_FIELDS:
            _copy_duration(getattr(stats, field_name), getattr(out.inference_stats, field_name))
        for size, durations in sorted(stats.batches.items()):
            batch = out.batch_stats.add(batch_size=size)
            for field_name in ("compute_input", "compute_infer", "compute_output"):
                _copy_duration(getattr(durations, field_name), getattr(batch, field_name))
    return response


def _copy_duration(duration: Duration, target: pb.StatisticDuration) -> None:
    target.count, target.ns = duration.count, duration.ns


# ----------------------------------------------------------------------------------------------- Classify


def image_sources(request: cpb.ClassifyRequest) -> list[ImageSource | None]:
    """None stands for an image that carries neither bytes nor pixels: the data plane answers it."""
    images: list[ImageSource | None] = []
    for image in request.images:
        source = image.WhichOneof("source")
        if source == "encoded":
            images.append(EncodedImage(image.encoded))
        elif source == "pixels":
            p = image.pixels
            images.append(RawImage(p.data, p.width, p.height, p.channels))
        else:
            images.append(None)
    return images


def classify_response(result: ClassifyResult) -> cpb.ClassifyResponse:
    response = cpb.ClassifyResponse(model_name=result.model_name, model_version=result.model_version,
                                    id=result.request_id)
    for row in result.predictions:
        out = response.results.add()
        for p in row:
            out.predictions.add(label=p.label, index=p.index, score=p.score)
    return response
