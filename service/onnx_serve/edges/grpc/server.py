"""The gRPC edge assembled: V2 + Classify servicers on one grpc.aio server, with bearer-token auth, TLS,
grpc.health.v1 (published from the data plane's state) and reflection."""

from __future__ import annotations

import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from onnx_serve import protos
from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.repository import State
from onnx_serve.core.settings import Settings
from onnx_serve.edges.grpc.auth import TokenAuthInterceptor
from onnx_serve.edges.grpc.classify import ClassifyServicer
from onnx_serve.edges.grpc.inference import InferenceServicer
from onnx_serve.protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc

log = logging.getLogger("onnx_serve.edges.grpc")
LIVENESS = "liveness"  # health service name that reports on the process alone
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PortUnavailable(OSError):
    """The gRPC address cannot be bound: in use, or not an address of this machine."""


def grpc_options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # grpc turns SO_REUSEPORT on by default, which lets a second server silently share a busy port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)))
    if settings.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", settings.max_concurrent_streams))
    return options


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("--tls-cert and --tls-key must be given together")
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


class GrpcEdge:
    def __init__(self, plane: DataPlane, settings: Settings, reuse_port: bool = False) -> None:
        self.plane = plane
        self.settings = settings
        interceptors = [TokenAuthInterceptor.from_file(settings.auth_token_file)] if settings.auth_token_file else []
        self.server = grpc.aio.server(options=grpc_options(settings, reuse_port), interceptors=interceptors)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), self.server)
        classify_pb2_grpc.add_ImageClassifierServicer_to_server(ClassifyServicer(plane), self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        _enable_reflection(self.server)
        self.credentials = server_credentials(settings)
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port (resolved when the setting is 0)."""
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            if self.credentials:
                port = self.server.add_secure_port(address, self.credentials)
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise PortUnavailable(f"cannot listen on {address}: the address is in use or not available here")
        self.port = port
        await self.health.set(LIVENESS, SERVING)
        await self.health.set("", NOT_SERVING)
        await self.server.start()
        return port

    async def publish_health(self) -> None:
        """Per-model health, and "" for the whole server: SERVING only when every model is ready."""
        plane = self.plane
        for name, model in list(plane.repository.models.items()):
            ready = model.state is State.READY and not plane.draining
            await self.health.set(name, SERVING if ready else NOT_SERVING)
        await self.health.set("", SERVING if plane.ready() else NOT_SERVING)

    async def stop(self, grace_s: float) -> None:
        """Health goes NOT_SERVING, new RPCs are refused, in-flight ones get `grace_s` to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace=grace_s)


def _enable_reflection(server: grpc.aio.Server) -> None:
    # Our stubs live in a private descriptor pool (see scripts/gen_protos.py); reflection must answer
    # from it, so the health and reflection protos are added there too.
    for module in (health_pb2, reflection_pb2):
        with contextlib.suppress(TypeError):
            protos.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    names = (
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        classify_pb2.DESCRIPTOR.services_by_name["ImageClassifier"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server, pool=protos.POOL)
