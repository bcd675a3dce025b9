"""A small typed Python client for onnx-serve: images in, labels out.

    from onnx_serve.client.client import Client

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
import queue
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnx_serve.client.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MODEL,
    DEFAULT_URL,
    MAX_TOP_K,
    ClientError,
    ImageInput,
    Images,
    ModelMetadata,
    ModelState,
    PemSource,
    Prediction,
    StreamResult,
    TensorMetadata,
    classify_request,
    image_list,
    image_proto,
    in_order,
    infer_outputs,
    infer_request,
    model_metadata_of,
    model_states,
    predictions,
    stream_result,
)
from onnx_serve.protos.inference import grpc_service_pb2 as v2
from onnx_serve.protos.inference import grpc_service_pb2_grpc as v2_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MODEL", "DEFAULT_URL", "MAX_TOP_K", "AsyncClient", "Client", "ClientError",
    "ImageInput", "Images", "ModelMetadata", "ModelState", "Prediction", "StreamResult", "TensorMetadata",
    "classify_request", "image_list", "image_proto", "infer_outputs", "infer_request", "predictions",
]
_TLS_SCHEMES = {"https": True, "grpcs": True, "http": False, "grpc": False}

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
        # Any: types-grpcio-health-checking types the stub for sync channels only (no Check on an aio one).
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

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
                    yield stream_result(response)
            except grpc.RpcError as error:
                raise ClientError.from_rpc(error) from None
            finally:
                responses.cancel()
            while not local.empty():
                yield local.get()
            if crashed:
                raise crashed[0]

        return in_order(results()) if ordered else results()

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
        return model_metadata_of(self._call(self._v2.ModelMetadata, request, timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 Check: ``SERVING`` or ``NOT_SERVING`` for ``service`` ("" the whole server, "liveness",
        or a model's name); an unknown service raises ClientError ``NOT_FOUND``."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[ModelState]:
        """Every model version of the repository with its state and reason (RepositoryIndex)."""
        request = v2.RepositoryIndexRequest(ready=ready_only)
        return model_states(self._call(self._v2.RepositoryIndex, request, timeout))


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
                yield stream_result(response)
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
        return model_metadata_of(await self._call(self._v2.ModelMetadata, request, timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def repository_index(self, *, ready_only: bool = False, timeout: float | None = None
                               ) -> list[ModelState]:
        request = v2.RepositoryIndexRequest(ready=ready_only)
        return model_states(await self._call(self._v2.RepositoryIndex, request, timeout))
