"""The server in this process: the data plane, its edges and the /metrics exporter, started and stopped from
Python (async or sync) or run until a signal by `onnx-serve serve`.

    from onnx_serve import Server, Settings

    with Server("models", Settings(grpc_port=0, http_port=0, metrics_port=0)) as server:   # a thread runs its loop
        print(server.grpc_url, server.http_url)

    async with Server("models") as server:                                    # on the running loop
        result = await server.data_plane.infer("mnist-cnn", "", {"input": batch})
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from onnx_serve.core import tracing
from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.metrics import Metrics, start_exporter
from onnx_serve.core.repository import Repository
from onnx_serve.core.settings import SettingError, Settings
from onnx_serve.edges.grpc.server import GrpcEdge
from onnx_serve.edges.http import HttpEdge
from onnx_serve.edges.shared import PortUnavailable

log = logging.getLogger("onnx_serve.server")


def _reachable(bind_host: str) -> str:
    """An address this process can connect to on a server bound to `bind_host` (all interfaces: loopback)."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "") else bind_host


def check_repository(path: Path) -> None:
    """The model repository must be a directory this process can list; anything else is a start-up mistake."""
    if not path.exists():
        raise SettingError(f"--model-repository {path}: no such directory")
    if not path.is_dir():
        raise SettingError(f"--model-repository {path}: not a directory")
    try:
        next(iter(path.iterdir()), None)
    except OSError as exc:
        raise SettingError(f"--model-repository {path}: cannot be read ({exc.strerror or exc})") from None


T = TypeVar("T")
HARD_EXIT_MARGIN_S = 0.8  # the process exits within drain delay + grace period + 1 s, whatever clients do
QUIET_S = 0.05  # no new call for this long: every closed-loop client's call is held (a resend takes < 1 ms here)
MAX_HOLD_S = 1.0  # open-loop clients never go quiet: shut down after this long anyway
GOAWAY_SETTLE_S = 0.1  # for clients to read the GOAWAY before their held call is answered


def _exit_after(seconds: float) -> None:
    """Ends the process after `seconds` if the drain has not by then: a watchdog thread, because what could stall
    the drain (a client that never reads, a hung model) may hold the event loop's tasks, not this thread."""
    def expire() -> None:
        log.error("shutdown did not finish within %.1fs (drain delay + grace period): exiting now", seconds)
        _flush_logs()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True  # a normal exit does not wait for it
    timer.start()


def _exit_now() -> None:
    log.warning("second SIGINT: exiting without finishing the drain")
    _flush_logs()
    os._exit(1)


def _flush_logs() -> None:
    for handler in logging.getLogger("onnx_serve").handlers:
        with contextlib.suppress(Exception):
            handler.flush()


class Server:
    """One onnx-serve server. `repository` overrides `settings.model_repository`. Ports set to 0 are
    resolved at start (see grpc_port, metrics_port); a metrics port of -1 disables the exporter."""

    def __init__(self, repository: str | Path | None = None, settings: Settings | None = None, *,
                 reuse_port: bool = False, worker: int | None = None) -> None:
        settings = settings or Settings()
        if repository is not None:
            settings = dataclasses.replace(settings, model_repository=Path(repository))
        self.settings = settings
        self.worker = worker  # the worker's index when one of several processes
        self.metrics = Metrics()
        self.repository = Repository(settings.model_repository, settings, self.metrics)
        self.data_plane = DataPlane(self.repository, self.metrics, max_elements=settings.max_message_bytes)
        self._reuse_port = reuse_port
        self._grpc: GrpcEdge | None = None
        self._http: HttpEdge | None = None
        self._exporter: WSGIServer | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0

    @property
    def grpc_url(self) -> str:
        return f"{_reachable(self.settings.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self._http is not None and self._http.ssl is not None else "http"
        return f"{scheme}://{_reachable(self.settings.http_bind_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_reachable(self.settings.metrics_bind_host)}:{self.metrics_port}/metrics"

    # ------------------------------------------------------------------------------------------------ async

    async def start(self) -> None:
        """Checks the repository, binds the metrics exporter and the edges, loads every model (READY after its
        warm-up), then reports health. Raises SettingError before anything binds for a setting it cannot
        honour (no repository directory; a TLS or token file), PortUnavailable when a port cannot be bound;
        nothing is left listening after a failed start."""
        settings = self.settings
        check_repository(settings.model_repository)
        if settings.tracing:
            tracing.setup()
        self._grpc = GrpcEdge(self.data_plane, settings, self._reuse_port)
        if settings.http_port >= 0:
            self._http = HttpEdge(self.data_plane, settings, self._reuse_port)
        if settings.metrics_port >= 0:
            try:
                self._exporter, _, self.metrics_port = start_exporter(settings.metrics_bind_host,
                                                                      settings.metrics_port, self.metrics)
            except OSError as exc:
                raise PortUnavailable(f"cannot serve metrics on {settings.metrics_bind_host}:{settings.metrics_port}:"
                                      f" {exc.strerror or exc}") from None
            log.info("metrics listening on %s:%d", settings.metrics_bind_host, self.metrics_port)
        self.repository.listeners.append(self._grpc.publish_health)
        if self._reuse_port:
            # A worker: the supervisor holds its ports, so they are free. It listens once its models serve, so
            # that a (re)started worker takes no connection only to answer UNAVAILABLE while it loads.
            await self._load()
            await self._start_edges()
        else:
            await self._start_edges()  # a busy port is one line at once, not after minutes of loading
            await self._load()
        who = "server" if self.worker is None else f"worker {self.worker}"
        if not self.repository.models:
            log.warning("%s ready, but no models found in %s", who, settings.model_repository)
        else:
            log.info("%s %s", who, "ready" if self.data_plane.ready() else "started, but not every model is ready")

    async def _start_edges(self) -> None:
        assert self._grpc is not None
        settings = self.settings
        try:
            self.grpc_port = await self._grpc.start()
        except BaseException:
            self._stop_exporter()
            raise
        if self.worker is None:
            log.info("grpc listening on %s:%d%s", settings.host, self.grpc_port,
                     " (TLS)" if self._grpc.credentials else "")
        if self._http is not None:
            try:
                self.http_port = await self._http.start()
            except BaseException:
                await self._grpc.stop(0)
                self._stop_exporter()
                raise
            if self.worker is None:
                log.info("http listening on %s:%d%s", settings.http_bind_host, self.http_port,
                         " (TLS)" if self._http.ssl else "")

    async def _load(self) -> None:
        assert self._grpc is not None
        await self.repository.load_all()
        self.data_plane.started = True
        await self._grpc.publish_health()

    async def reload(self) -> None:
        """Reloads every model of the repository (SIGHUP): new versions load beside the serving ones."""
        log.info("reloading the model repository")
        await self.repository.reload_all()

    async def stop(self, grace_s: float | None = None, drain_delay_s: float | None = None) -> None:
        """Drains in the order a load balancer relies on (settings give the times unless passed here):
        1. health NOT_SERVING while requests are still served, for the drain delay: Kubernetes removes the
           endpoint meanwhile, so that new requests go elsewhere;
        2. new requests refused UNAVAILABLE (the status clients retry), running ones finish, within the grace
           period;
        3. the edges stop listening (GOAWAY: clients reconnect elsewhere) and cancel what still runs; the
           models unload."""
        grace = max(0.0, self.settings.grace_period_s if grace_s is None else grace_s)
        delay = max(0.0, self.settings.drain_delay_s if drain_delay_s is None else drain_delay_s)
        log.info("draining: health NOT_SERVING for %.1fs, then in-flight requests get up to %.1fs", delay, grace)
        self.data_plane.draining = True
        if self._grpc is not None:
            self._grpc.begin_drain()
        await asyncio.sleep(delay)
        await self._stop_edges(grace)
        for task in list(self._reloads):
            task.cancel()
        await self.repository.close()
        self.data_plane.close()
        self._stop_exporter()
        tracing.shutdown()
        log.info("stopped")

    async def _stop_edges(self, grace: float) -> None:
        """Steps 2 and 3 of stop(): refused calls are held (see core/admission.py) until the edges have said
        GOAWAY, so that no client has a call on the wire when grpc core shuts down and cancels those."""
        admission = self.data_plane.admission
        deadline = time.monotonic() + grace
        if not await admission.finish(grace):
            log.warning("grace period over: cancelling the requests still running")
        await admission.quiet(QUIET_S, min(MAX_HOLD_S, deadline - time.monotonic()))
        stopping = asyncio.gather(*(edge.stop(max(0.0, deadline - time.monotonic())) for edge in self._edges()))
        await asyncio.sleep(GOAWAY_SETTLE_S)  # clients read the GOAWAY before their held call's answer
        admission.release()
        await stopping

    def _edges(self) -> list[GrpcEdge | HttpEdge]:
        return [edge for edge in (self._grpc, self._http) if edge is not None]

    def _stop_exporter(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()
            self._exporter.server_close()
            self._exporter = None

    async def serve(self, on_ready: Callable[[], None] | None = None) -> int:
        """Runs until SIGTERM or SIGINT (then drains and returns 0); SIGHUP reloads. Returns 2 for a start-up
        mistake (a setting it cannot honour, a port in use), logged in one line."""
        try:
            await self.start()
        except (SettingError, PortUnavailable) as exc:
            log.error("%s", exc)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
        if on_ready is not None:  # after the handlers: a signal sent on hearing "ready" is not lost
            on_ready()
        try:
            await stop.wait()
            limit = max(0.0, self.settings.drain_delay_s) + max(0.0, self.settings.grace_period_s) + HARD_EXIT_MARGIN_S
            _exit_after(limit)
            # A second Ctrl-C means "now". A second SIGTERM is ignored: a process manager may send one to the
            # whole process group as well as the supervisor's own, which must not cut a worker's drain short.
            loop.add_signal_handler(signal.SIGINT, _exit_now)
            loop.add_signal_handler(signal.SIGTERM, lambda: log.info("draining already"))
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return 0

    def _reload_in_background(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------------- sync

    def __enter__(self) -> Server:
        """Starts the server on an event loop of its own, in a background thread."""
        ready = threading.Event()

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="onnx-serve", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self.call(self.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.call(self.stop())
        finally:
            self._stop_loop()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Runs a coroutine on the server's loop (sync use only) and waits for its result, e.g.
        `server.call(server.data_plane.infer(...))`."""
        if self._loop is None:
            raise RuntimeError("the server is not running in a thread: use `with Server(...)`")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._loop, self._thread = None, None
