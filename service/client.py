"""A small typed Python client for onnx-serve: images in, labels out.

    from service.client import Client

    with Client("127.0.0.1:8001") as client:
        [top] = client.classify("digit.png")              # one image -> one list of predictions
        print(top[0].label, top[0].score)
        tops = client.classify([png_bytes, pil_image, pixels], model="mnist-cnn", top_k=3)
        outputs = client.infer("mnist-cnn", {"input": batch})   # KServe V2, raw tensor contents

Images are file paths, encoded bytes (JPEG, PNG, BMP, GIF, WebP, TIFF), PIL images or uint8 numpy arrays
(HxW grey, HxWx3 RGB, HxWx4 RGBA). Arrays and PIL images in mode L/RGB/RGBA travel as raw pixels, so the
server sees exactly those pixels (no lossy re-encoding); other PIL modes are sent as lossless PNG.

Every failed RPC raises :class:`ClientError` carrying the gRPC status name (``INVALID_ARGUMENT``,
``NOT_FOUND``, ``UNAVAILABLE``...) and the server's message. Bad local input raises ``TypeError`` /
``ValueError`` (naming the image's index) and unreadable paths ``OSError``, before anything is sent.

Scaling out: ``Client("dns:///onnx-serve-headless.default.svc.cluster.local:8001")`` resolves every
address behind the name (a Kubernetes *headless* Service, ``clusterIP: None``, lists one per pod) and
spreads calls over them with gRPC's client-side ``round_robin`` policy. Through an ordinary ClusterIP
Service all calls of a connection stick to one pod; the server's ``--max-connection-age`` makes clients
reconnect (and re-resolve), which rebalances after a scale-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import numpy as np
from PIL import Image

from service.codec import DATATYPES, datatype_of, deserialize_bytes, to_raw
from service.protos.inference import grpc_service_pb2 as v2
from service.protos.inference import grpc_service_pb2_grpc as v2_grpc
from service.protos.onnxserve.v1 import classify_pb2 as pb
from service.protos.onnxserve.v1 import classify_pb2_grpc as pb_grpc

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL = "mnist-cnn"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default --max-message-bytes
MAX_TOP_K = 2**32 - 1  # the field is a uint32; the server clips top_k to the model's classes anyway

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Image.Image
Images: TypeAlias = ImageInput | Sequence[ImageInput] | Iterable[ImageInput]
PemSource: TypeAlias = bytes | str | os.PathLike[str]

_RAW_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_TLS_SCHEMES = {"https": True, "grpcs": True, "http": False, "grpc": False}


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
class Prediction:
    label: str
    index: int
    score: float


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


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic axis


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


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


def _model_metadata(response: v2.ModelMetadataResponse) -> ModelMetadata:
    def tensors(items: Any) -> tuple[TensorMetadata, ...]:
        return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in items)

    return ModelMetadata(response.name, tuple(response.versions), response.platform, tensors(response.inputs),
                         tensors(response.outputs))


def _stream_result(response: pb.ClassifyStreamResponse) -> StreamResult:
    index = int(response.response.id)
    if response.error_code or response.error_message:
        return StreamResult(index, error=ClientError(response.error_code or "UNKNOWN", response.error_message))
    return StreamResult(index, predictions(response.response))


def _in_order(results: Iterable[StreamResult]) -> Iterator[StreamResult]:
    waiting: dict[int, StreamResult] = {}
    next_index = 0
    for result in results:
        waiting[result.index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    yield from (waiting[i] for i in sorted(waiting))


# -------------------------------------------------------------------------------------------- channel


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True, slots=True)
class _ChannelSettings:
    target: str
    credentials: grpc.ChannelCredentials | None
    options: list[tuple[str, Any]]
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def create(cls, url: str, tls: bool | None, root_certificates: PemSource | None, client_cert: PemSource | None,
               client_key: PemSource | None, tls_server_name: str | None, token: str | None, max_message_bytes: int,
               load_balancing: str) -> _ChannelSettings:
        target = url
        scheme, sep, rest = url.partition("://")
        if sep and scheme in _TLS_SCHEMES:
            target = rest.rstrip("/")
            tls = _TLS_SCHEMES[scheme] if tls is None else tls
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        use_tls = bool(tls) or root_certificates is not None or client_cert is not None
        credentials = None
        if use_tls:
            credentials = grpc.ssl_channel_credentials(_read_pem(root_certificates), _read_pem(client_key),
                                                       _read_pem(client_cert))
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.lb_policy_name", load_balancing),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        metadata = (("authorization", f"Bearer {token.strip()}"),) if token else ()
        return cls(target, credentials, options, metadata)


class _Base:
    def __init__(self, url: str = DEFAULT_URL, *, tls: bool | None = None,
                 root_certificates: PemSource | None = None, client_cert: PemSource | None = None,
                 client_key: PemSource | None = None, tls_server_name: str | None = None, token: str | None = None,
                 timeout: float | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 load_balancing: str = "round_robin") -> None:
        """``url``: ``host:port``, ``http(s)://host:port`` (https turns TLS on), ``dns:///name:port``,
        ``unix:/path``... ``tls``: True for TLS with the system's roots; ``root_certificates`` (PEM bytes
        or a file) pins a CA and implies TLS; ``client_cert`` + ``client_key`` for mutual TLS;
        ``tls_server_name`` overrides the name checked in the server's certificate. ``token`` is sent as
        ``authorization: Bearer <token>``. ``timeout``: default seconds per call (None: no deadline)."""
        self.url = url
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._settings = _ChannelSettings.create(url, tls, root_certificates, client_cert, client_key,
                                                 tls_server_name, token, max_message_bytes, load_balancing)
        self._channel = self._open_channel(self._settings)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)
        self._classifier = pb_grpc.ImageClassifierStub(self._channel)

    def _open_channel(self, settings: _ChannelSettings) -> Any:
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _stream_request(self, images: Images, model: str, top_k: int | None, version: str, index: int
                        ) -> pb.ClassifyRequest:
        """One request of a stream, refused here when it is over the message limit: sent, it would end the
        whole stream with RESOURCE_EXHAUSTED rather than fail alone."""
        request = classify_request(images, model, top_k, version, str(index))
        if (size := request.ByteSize()) > self.max_message_bytes:
            raise ClientError("RESOURCE_EXHAUSTED", f"request {index} is {size} bytes, above the message limit "
                              f"of {self.max_message_bytes}")
        return request


class Client(_Base):
    """Blocking client; thread-safe (one HTTP/2 connection per resolved address, shared by all threads)."""

    def _open_channel(self, settings: _ChannelSettings) -> grpc.Channel:
        if settings.credentials:
            return grpc.secure_channel(settings.target, settings.credentials, settings.options)
        return grpc.insecure_channel(settings.target, settings.options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise ClientError.from_rpc(error) from None

    def classify(self, images: Images, model: str = DEFAULT_MODEL, top_k: int | None = None, version: str = "",
                 *, timeout: float | None = None) -> list[list[Prediction]]:
        """Top-k predictions (best first) for each image, in order; a single image gives a list of one.
        ``top_k=None`` uses the model's configured default; ``version=""`` its latest ready version."""
        request = classify_request(images, model, top_k, version)
        return predictions(self._call(self._classifier.Classify, request, timeout))

    def classify_stream(self, requests: Iterable[Images], model: str = DEFAULT_MODEL, top_k: int | None = None,
                        version: str = "", *, ordered: bool = False, timeout: float | None = None
                        ) -> Iterator[StreamResult]:
        """Classify many requests (each an image or a list of images) over one ClassifyStream RPC.

        ``requests`` is consumed lazily. Results come as they finish (``ordered=True``: in request order),
        each with its request's ``index``; a request that fails, on the server or locally (an unreadable
        path), gives a result holding its error and the others go on. A failure of the stream itself
        (unreachable server, bad token, deadline) raises :class:`ClientError`."""
        local: queue.SimpleQueue[StreamResult] = queue.SimpleQueue()
        crashed: list[BaseException] = []

        def generate() -> Iterator[pb.ClassifyRequest]:  # runs in a grpc thread
            try:
                for index, images in enumerate(requests):
                    try:
                        request = self._stream_request(images, model, top_k, version, index)
                    except (OSError, TypeError, ValueError, ClientError) as exc:
                        local.put(StreamResult(index, error=exc))
                        continue
                    yield request
            except BaseException as exc:  # the caller's iterable failed: end the stream, re-raise below
                crashed.append(exc)

        def results() -> Iterator[StreamResult]:
            responses = self._classifier.ClassifyStream(generate(), timeout=self._timeout(timeout),
                                                        metadata=self._settings.metadata)
            try:
                for response in responses:
                    while not local.empty():
                        yield local.get()
                    yield _stream_result(response)
            except grpc.RpcError as error:
                raise ClientError.from_rpc(error) from None
            finally:
                responses.cancel()
            while not local.empty():
                yield local.get()
            if crashed:
                raise crashed[0]

        return _in_order(results()) if ordered else results()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
              version: str = "", *, timeout: float | None = None) -> dict[str, np.ndarray]:
        """KServe V2 ModelInfer with raw tensor contents; returns the (requested, else all) outputs by name."""
        return infer_outputs(self._call(self._v2.ModelInfer, infer_request(model, inputs, outputs, version),
                                        timeout))

    def live(self, *, timeout: float | None = None) -> bool:
        return bool(self._call(self._v2.ServerLive, v2.ServerLiveRequest(), timeout).live)

    def ready(self, model: str | None = None, version: str = "", *, timeout: float | None = None) -> bool:
        """Server readiness, or one model's (version's) when ``model`` is given."""
        if model is None:
            return bool(self._call(self._v2.ServerReady, v2.ServerReadyRequest(), timeout).ready)
        return bool(self._call(self._v2.ModelReady, v2.ModelReadyRequest(name=model, version=version), timeout).ready)

    def model_metadata(self, model: str = DEFAULT_MODEL, version: str = "", *, timeout: float | None = None
                       ) -> ModelMetadata:
        request = v2.ModelMetadataRequest(name=model, version=version)
        return _model_metadata(self._call(self._v2.ModelMetadata, request, timeout))


class AsyncClient(_Base):
    """The same API for asyncio (grpc.aio); create it inside the running event loop."""

    def _open_channel(self, settings: _ChannelSettings) -> grpc.aio.Channel:
        if settings.credentials:
            return grpc.aio.secure_channel(settings.target, settings.credentials, settings.options)
        return grpc.aio.insecure_channel(settings.target, settings.options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self._settings.metadata)
        except grpc.RpcError as error:
            raise ClientError.from_rpc(error) from None

    async def classify(self, images: Images, model: str = DEFAULT_MODEL, top_k: int | None = None,
                       version: str = "", *, timeout: float | None = None) -> list[list[Prediction]]:
        request = classify_request(images, model, top_k, version)
        return predictions(await self._call(self._classifier.Classify, request, timeout))

    async def classify_stream(self, requests: Iterable[Images], model: str = DEFAULT_MODEL,
                              top_k: int | None = None, version: str = "", *, timeout: float | None = None
                              ) -> AsyncIterator[StreamResult]:
        """As :meth:`Client.classify_stream`, in completion order. Requests are built (paths read) on the
        event loop as the stream has room for them."""
        call = self._classifier.ClassifyStream(timeout=self._timeout(timeout), metadata=self._settings.metadata)
        local: list[StreamResult] = []

        async def write() -> None:
            try:
                for index, images in enumerate(requests):
                    try:
                        request = self._stream_request(images, model, top_k, version, index)
                    except (OSError, TypeError, ValueError, ClientError) as exc:
                        local.append(StreamResult(index, error=exc))
                        continue
                    await call.write(request)
            finally:  # also when the caller's iterable fails, so the server ends the stream
                with contextlib.suppress(Exception):
                    await call.done_writing()

        writer = asyncio.create_task(write())
        try:
            async for response in call:
                while local:
                    yield local.pop(0)
                yield _stream_result(response)
            await writer
            while local:
                yield local.pop(0)
        except grpc.RpcError as error:
            raise ClientError.from_rpc(error) from None
        finally:
            call.cancel()
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
                    version: str = "", *, timeout: float | None = None) -> dict[str, np.ndarray]:
        request = infer_request(model, inputs, outputs, version)
        return infer_outputs(await self._call(self._v2.ModelInfer, request, timeout))

    async def live(self, *, timeout: float | None = None) -> bool:
        return bool((await self._call(self._v2.ServerLive, v2.ServerLiveRequest(), timeout)).live)

    async def ready(self, model: str | None = None, version: str = "", *, timeout: float | None = None) -> bool:
        if model is None:
            return bool((await self._call(self._v2.ServerReady, v2.ServerReadyRequest(), timeout)).ready)
        request = v2.ModelReadyRequest(name=model, version=version)
        return bool((await self._call(self._v2.ModelReady, request, timeout)).ready)

    async def model_metadata(self, model: str = DEFAULT_MODEL, version: str = "", *, timeout: float | None = None
                             ) -> ModelMetadata:
        request = v2.ModelMetadataRequest(name=model, version=version)
        return _model_metadata(await self._call(self._v2.ModelMetadata, request, timeout))
