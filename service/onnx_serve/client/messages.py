"""The messages of the onnx-serve client, with no channel: image conversion, request building and response
parsing. onnx_serve.client.client wraps them in a sync and an async client."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import numpy as np
from PIL import Image

from onnx_serve.protos.inference import grpc_service_pb2 as v2
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as pb
from onnx_serve.types import DATATYPES, TensorSpec, datatype_of, deserialize_bytes, to_raw
from onnx_serve.types import Prediction as Prediction  # re-exported: part of the client's surface

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL = "mnist-cnn"
# What the client sends and accepts; a server refuses above its own --max-message-bytes (2 MiB by default).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_TOP_K = 2**32 - 1  # the field is a uint32; the server clips top_k to the model's classes anyway

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Image.Image
Images: TypeAlias = ImageInput | Sequence[ImageInput] | Iterable[ImageInput]
PemSource: TypeAlias = bytes | str | os.PathLike[str]

_RAW_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class ClientError(Exception):
    """An RPC failed: ``code`` is the gRPC status name (e.g. ``INVALID_ARGUMENT``), ``message`` the server's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> ClientError:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        return cls(code.name if code is not None else "UNKNOWN", details or str(error))


@dataclass(frozen=True, slots=True)
class StreamResult:
    """The answer to the ``index``-th request of :meth:`Client.classify_stream`: predictions or an error."""

    index: int
    predictions: list[list[Prediction]] | None = None
    error: Exception | None = None

    def result(self) -> list[list[Prediction]]:
        """The predictions, or raise the error."""
        if self.error is not None:
            raise self.error
        assert self.predictions is not None
        return self.predictions


TensorMetadata = TensorSpec  # the client's name for a model input or output in ModelMetadata


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model version of the repository index: ``state`` is ``READY``, ``LOADING``, ``UNAVAILABLE``...; ``reason``
    says why it is not ready (or why its last reload failed), else is empty. ``version`` is empty for a model
    that has no loaded version."""

    name: str
    version: str
    state: str
    reason: str


def model_states(response: v2.RepositoryIndexResponse) -> list[ModelState]:
    return [ModelState(model.name, model.version, model.state, model.reason) for model in response.models]


# ------------------------------------------------------------------------------------------- requests


def image_proto(image: ImageInput, index: int = 0) -> pb.Image:
    """One image of a ClassifyRequest; ``index`` only words the error messages."""
    if isinstance(image, str | os.PathLike):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        return pb.Image(pixels=_array_pixels(image, index))
    if isinstance(image, Image.Image):
        if image.mode in _RAW_MODES:
            return pb.Image(pixels=pb.RawPixels(data=image.tobytes(), width=image.width, height=image.height,
                                                channels=_RAW_MODES[image.mode]))
        if image.mode not in _PNG_MODES:
            image = image.convert("RGB")  # what the server would do with CMYK, YCbCr, LAB, HSV
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless, so the server still sees the same pixels
        return pb.Image(encoded=buffer.getvalue())
    raise TypeError(f"image {index}: expected a path, bytes, a PIL image or a numpy array, "
                    f"got {type(image).__name__}")


def _array_pixels(array: np.ndarray, index: int) -> pb.RawPixels:
    if array.dtype != np.uint8:
        raise ValueError(f"image {index}: numpy images must be uint8 pixels (0..255), got dtype {array.dtype}; "
                         "for floats in [0, 1] send (array * 255).round().astype(np.uint8)")
    if array.ndim == 2:
        (height, width), channels = array.shape, 1
    elif array.ndim == 3 and array.shape[2] in (1, 3, 4):
        height, width, channels = array.shape
    else:
        raise ValueError(f"image {index}: numpy image of shape {list(array.shape)}; expected HxW (grey), "
                         "HxWx3 (RGB) or HxWx4 (RGBA); pass several images as a list")
    if height == 0 or width == 0:
        raise ValueError(f"image {index}: numpy image of shape {list(array.shape)} has no pixels")
    return pb.RawPixels(data=np.ascontiguousarray(array).tobytes(), width=width, height=height, channels=channels)


def image_list(images: Images) -> list[ImageInput]:
    """A single image becomes a list of one; lists, tuples and other iterables are taken as they are."""
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"expected an image or a list of images, got {type(images).__name__}")


def classify_request(images: Images, model: str, top_k: int | None = None, version: str = "",
                     request_id: str = "") -> pb.ClassifyRequest:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None (the model's default), got {top_k!r}")
    protos = [image_proto(image, i) for i, image in enumerate(image_list(images))]
    return pb.ClassifyRequest(model_name=model, model_version=version, images=protos,
                              top_k=min(top_k or 0, MAX_TOP_K), id=request_id)


def predictions(response: pb.ClassifyResponse) -> list[list[Prediction]]:
    return [[Prediction(p.label, p.index, p.score) for p in result.predictions] for result in response.results]


def infer_request(model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
                  version: str = "") -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model, model_version=version)
    for name, value in inputs.items():
        array = np.asarray(value)
        try:
            datatype = datatype_of(array).name
        except KeyError:
            raise TypeError(f"input '{name}': numpy dtype {array.dtype} has no KServe V2 datatype") from None
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(to_raw(array))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer_outputs(response: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output tensors by name. Raw contents are viewed, not copied: the arrays are read-only."""
    result: dict[str, np.ndarray] = {}
    for i, output in enumerate(response.outputs):
        datatype, shape = DATATYPES[output.datatype], tuple(output.shape)
        count = int(np.prod(shape, dtype=np.int64))
        if i < len(response.raw_output_contents):
            raw = response.raw_output_contents[i]
            array = (deserialize_bytes(raw, count, f"output '{output.name}'") if datatype.name == "BYTES"
                     else np.frombuffer(raw, dtype=datatype.numpy))
        else:  # typed contents, as some V2 servers answer
            values = list(getattr(output.contents, datatype.contents_field or "bytes_contents"))
            array = np.array(values, dtype=datatype.numpy)
        result[output.name] = array.reshape(shape)
    return result


def model_metadata_of(response: v2.ModelMetadataResponse) -> ModelMetadata:
    def tensors(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in items)

    return ModelMetadata(response.name, tuple(response.versions), response.platform, tensors(response.inputs),
                         tensors(response.outputs))


def stream_result(response: pb.ClassifyStreamResponse) -> StreamResult:
    index = int(response.response.id)
    if response.error_code or response.error_message:
        return StreamResult(index, error=ClientError(response.error_code or "UNKNOWN", response.error_message))
    return StreamResult(index, predictions(response.response))


def in_order(results: Iterable[StreamResult]) -> Iterator[StreamResult]:
    waiting: dict[int, StreamResult] = {}
    next_index = 0
    for result in results:
        waiting[result.index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    yield from (waiting[i] for i in sorted(waiting))


# -------------------------------------------------------------------------------------------- channel
