"""Assembles the grpc.aio server: V2 + Classify + health + reflection, the metrics exporter, model loading,
signals (SIGTERM/SIGINT drain and exit 0, SIGHUP reloads the repository) and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from onnx_serve import protos
from onnx_serve.core import tracing
from onnx_serve.core.metrics import Metrics, start_exporter
from onnx_serve.core.repository import Repository, State
from onnx_serve.core.settings import Settings
from onnx_serve.edges.grpc.auth import TokenAuthInterceptor
from onnx_serve.edges.grpc.classify import ClassifyServicer
from onnx_serve.edges.grpc.inference import InferenceServicer, Server
from onnx_serve.protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc

log = logging.getLogger("onnx_serve.edges.grpc.server")
LIVENESS = "liveness"


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
        raise SystemExit("--tls-cert and --tls-key must be given together")
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass
class RunningServer:
    settings: Settings
    reuse_port: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    worker: int | None = None  # the worker's index when one of several processes
    on_ready: Callable[[], None] | None = None
    grpc_port: int = 0
    metrics_port: int = 0

    async def run(self) -> int:
        settings = self.settings
        if settings.tracing:
            tracing.setup()
        repository = Repository(settings.model_repository, settings, self.metrics)
        state = Server(repository, self.metrics, max_elements=settings.max_message_bytes)
        interceptors = [TokenAuthInterceptor.from_file(settings.auth_token_file)] if settings.auth_token_file else []
        server = grpc.aio.server(options=grpc_options(settings, self.reuse_port), interceptors=interceptors)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
        classify_pb2_grpc.add_ImageClassifierServicer_to_server(ClassifyServicer(state), server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        _enable_reflection(server)

        address = f"{settings.host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            log.error("cannot listen on %s: the address is in use or not available here", address)
            return 1
        self.grpc_port = port
        exporter = None
        if settings.metrics_port >= 0:
            exporter, _, self.metrics_port = start_exporter(settings.metrics_bind_host, settings.metrics_port,
                                                            self.metrics)
            log.info("metrics listening on %s:%d", settings.metrics_bind_host, self.metrics_port)
        await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if self.worker is None:
            log.info("grpc listening on %s:%d%s", settings.host, port, " (TLS)" if credentials else "")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            log.info("SIGHUP: reloading the model repository")
            await repository.reload_all()
            await publish_health()

        def on_hup() -> None:
            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        async def publish_health() -> None:
            serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            for name, model in list(repository.models.items()):
                await health.set(name, serving if model.state is State.READY and not state.draining else not_serving)
            await health.set("", serving if state.ready() else not_serving)

        repository.listeners.append(publish_health)
        await repository.load_all()
        state.started = True
        await publish_health()
        who = "server" if self.worker is None else f"worker {self.worker}"
        log.info("%s %s", who, "ready" if state.ready() else "started, but not every model is ready")
        if self.on_ready is not None:
            self.on_ready()

        await stop.wait()
        log.info("draining: finishing in-flight requests for up to %.1fs", settings.grace_period_s)
        state.draining = True
        await health.enter_graceful_shutdown()
        await server.stop(grace=settings.grace_period_s)
        for task in list(reloads):
            task.cancel()
        await repository.close()
        if exporter is not None:
            exporter.shutdown()
        tracing.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0


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
