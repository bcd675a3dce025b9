"""The HTTP edge assembled: our ASGI app on uvicorn's httptools protocol, in this process and on the event loop
the gRPC server runs on, with the gRPC edge's TLS, bearer tokens and message size limit.

uvicorn is used as a protocol implementation, not as a program: this module binds the socket itself (so that
a busy port is PortUnavailable and `--workers` share it with SO_REUSEPORT), starts uvicorn's server on it
without lifespan, signal handlers or logging configuration, and stops it in the drain's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import uvicorn

from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.settings import SettingError, Settings
from onnx_serve.edges.http.app import HttpApp
from onnx_serve.edges.http.protocol import protocol_class
from onnx_serve.edges.shared import bind_socket, read_tokens

log = logging.getLogger("onnx_serve.edges.http")
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this long (uvicorn's default)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS as the gRPC edge serves it (the same files; mutual TLS with --tls-client-ca), or None for plaintext.
    The files were checked by the gRPC edge's check_security_settings; a failure here is still one line."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not cert or not key:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
        if client_ca:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as error:
        raise SettingError(f"--tls-cert {cert} / --tls-key {key}: cannot serve HTTPS with them: {error}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpEdge:
    def __init__(self, plane: DataPlane, settings: Settings, reuse_port: bool = False) -> None:
        self.plane = plane
        self.settings = settings
        self.reuse_port = reuse_port
        tokens = read_tokens(settings.auth_token_file) if settings.auth_token_file else None
        self.app = HttpApp(plane, settings, tokens)
        self.ssl = ssl_context(settings)
        self.port = 0
        self._server: uvicorn.Server | None = None

    async def start(self) -> int:
        """Binds and starts serving; returns the bound port (resolved when the setting is 0)."""
        settings = self.settings
        sock = bind_socket(settings.http_bind_host, settings.http_port, self.reuse_port, "HTTP")
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, http=protocol_class(settings.http_read_timeout_s), ws="none", lifespan="off", loop="none",
            interface="asgi3", log_config=None, access_log=False,  # the data plane writes the access log
            proxy_headers=False, server_header=False, date_header=False, timeout_keep_alive=KEEP_ALIVE_S)
        config.load()
        config.ssl = self.ssl
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)  # "off": what Server.serve would set up
        try:
            await self._server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, closes idle connections, lets in-flight requests finish within `grace_s` (each answer
        then closes its connection), and closes what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        for listener in server.servers:
            listener.close()
        state = server.server_state
        for connection in list(state.connections):
            connection.shutdown()  # idle: closed now; busy: closed once its response is sent
        if state.tasks:
            _, pending = await asyncio.wait(set(state.tasks), timeout=max(0.0, grace_s))
            for task in pending:
                task.cancel()
            if pending:
                log.warning("http: cancelled %d requests still running after the grace period", len(pending))
                await asyncio.wait(pending, timeout=1.0)
        for connection in list(state.connections):
            with contextlib.suppress(Exception):
                connection.transport.close()
        for listener in server.servers:
            await listener.wait_closed()
