"""The gRPC edge assembled: V2 + Classify servicers on one grpc.aio server, with bearer-token auth, TLS,
grpc.health.v1 (published from the data plane's state) and reflection."""

from __future__ import annotations

import contextlib
import logging
import ssl
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from onnx_serve import protos
from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.settings import SettingError, Settings
from onnx_serve.edges.grpc.auth import TokenAuthInterceptor
from onnx_serve.edges.grpc.classify import ClassifyServicer
from onnx_serve.edges.grpc.health import NOT_SERVING, SERVING, HealthServicer
from onnx_serve.edges.grpc.inference import InferenceServicer
from onnx_serve.edges.grpc.transport import LimitedRegistry, make_server
from onnx_serve.edges.shared import PortUnavailable
from onnx_serve.protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc

log = logging.getLogger("onnx_serve.edges.grpc")
LIVENESS = "liveness"  # health service name that reports on the process alone


def check_security_settings(settings: Settings) -> None:
    """Raises SettingError (one line naming the flag and file) for a TLS or token setting that cannot be honoured,
    before anything binds: the CLI runs it first, so that with --workers no worker starts either."""
    server_credentials(settings)
    if settings.auth_token_file:
        TokenAuthInterceptor.from_file(settings.auth_token_file)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The TLS credentials, or None for plaintext (no TLS setting at all). Fails closed: raises SettingError for a
    TLS setting that cannot be honoured (given alone, unreadable, not PEM, a key that is not the certificate's)."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not cert and not key:
        if client_ca:
            raise SettingError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS without TLS would "
                               "serve plaintext")
        return None
    if not (cert and key):
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise SettingError(f"{given} is given without {missing}: TLS needs both")
    cert_pem = _read_pem("--tls-cert", cert)
    key_pem = _read_pem("--tls-key", key)
    ca_pem = _read_pem("--tls-client-ca", client_ca) if client_ca else None
    _check_pem(cert, key, cert_pem, ca_pem, client_ca)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


def _read_pem(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SettingError(f"{flag} {path}: cannot read it: {error.strerror or error}") from None


def _check_pem(cert: Path, key: Path, cert_pem: bytes, ca_pem: bytes | None, client_ca: Path | None) -> None:
    """Parses what grpc would only reject when binding (logged as a port it cannot listen on) or at each
    handshake: with Python's OpenSSL, at the lowest security level, so that only parsing is judged here."""
    def context() -> ssl.SSLContext:
        made = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        made.set_ciphers("DEFAULT:@SECLEVEL=0")
        return made

    for flag, path, pem in (("--tls-cert", cert, cert_pem), ("--tls-client-ca", client_ca, ca_pem)):
        if path is None or pem is None:
            continue
        try:
            # cadata must be ASCII; what is not (text around the PEM blocks) is dropped, PEM itself is ASCII.
            context().load_verify_locations(cadata=pem.decode("ascii", errors="ignore"))
        except (ssl.SSLError, ValueError):  # ValueError: empty
            raise SettingError(f"{flag} {path}: holds no PEM certificate") from None
    try:
        # A password callback, so that an encrypted key fails here instead of OpenSSL prompting on the terminal.
        context().load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as error:
        what = ("is not the private key of" if error.reason == "KEY_VALUES_MISMATCH"
                else "is not an unencrypted PEM private key for")
        raise SettingError(f"--tls-key {key}: {what} --tls-cert {cert}") from None
    except OSError as error:
        raise SettingError(f"--tls-key {key}: cannot read it: {error.strerror or error}") from None


class GrpcEdge:
    def __init__(self, plane: DataPlane, settings: Settings, reuse_port: bool = False) -> None:
        self.plane = plane
        self.settings = settings
        interceptors = [TokenAuthInterceptor.from_file(settings.auth_token_file)] if settings.auth_token_file else []
        self.server = make_server(settings, reuse_port, interceptors)
        # Every service is registered with the request limits; the registry has the two registration methods the
        # generated add_*_to_server functions call, which is all they use of a server.
        registry = cast(grpc.aio.Server, LimitedRegistry(self.server, settings))
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), registry)
        classify_pb2_grpc.add_ImageClassifierServicer_to_server(ClassifyServicer(plane), registry)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        _enable_reflection(registry)
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
        self.health.set(LIVENESS, SERVING)
        self.health.set("", NOT_SERVING)
        await self.server.start()
        return port

    async def publish_health(self) -> None:
        """Per-model health, and "" for the whole server: SERVING only when every model is ready."""
        for name, ready in self.plane.model_readiness().items():
            self.health.set(name, SERVING if ready else NOT_SERVING)
        self.health.set("", SERVING if self.plane.ready() else NOT_SERVING)

    def begin_drain(self) -> None:
        """Health NOT_SERVING for good (liveness excepted: the process is alive), while RPCs are still answered."""
        self.health.shutdown(keep=(LIVENESS,))

    async def stop(self, grace_s: float) -> None:
        """Stops listening and sends GOAWAY; RPCs still running get `grace_s` to finish, then are cancelled."""
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
