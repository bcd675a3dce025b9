"""Runs the server: in this process, or as N worker processes sharing one port (SO_REUSEPORT).

With workers, this process (the supervisor) reserves the port, starts the workers (spawned, so each has its own
ONNX Runtime sessions and a share of the CPU quota), serves the aggregated /metrics from prometheus_client's
multiprocess files, and keeps the workers running:
- a worker that dies, or exits without being asked to (even with 0), is restarted on the same port after a
  backoff (BACKOFF_FIRST_S doubling to BACKOFF_MAX_S, back to the first after a life of BACKOFF_RESET_AFTER_S),
  counted by onnx_serve_worker_restarts_total; the others serve throughout;
- a worker that exits 2 before it was ever ready made a start-up mistake (a setting or file it cannot honour)
  that a restart cannot fix: the others are stopped and the server exits 2, as one process would;
- SIGTERM or SIGINT stops them all (each drains) and exits 0; SIGHUP is forwarded (each reloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from onnx_serve.core.settings import Settings
from onnx_serve.edges.shared import PortUnavailable, bind_socket

log = logging.getLogger("onnx_serve.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0  # longer than the cap: a worker crashing at every cap interval never resets
STARTUP_MISTAKE = 2  # Server.serve's exit status for a setting it cannot honour or a port it cannot bind
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_server(settings: Settings) -> int:
    if settings.workers <= 1:
        from onnx_serve.server import Server

        return asyncio.run(Server(settings=settings).serve())
    return _supervise(settings)


def _worker_main(settings: Settings, index: int, ready: Connection, log_level: str, log_format: str) -> None:
    from onnx_serve.logs import setup_logging
    from onnx_serve.server import Server

    # Signals come from the supervisor, once each: a second SIGTERM or SIGINT ends a draining worker at once, so
    # a terminal's Ctrl-C (sent to the whole foreground process group) must reach the supervisor only.
    os.setpgid(0, 0)
    # Until Server.serve installs its handler, SIGHUP's default action would kill a worker that is still
    # loading; the supervisor sends it a reload once it is ready instead.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(log_level, log_format, settings.access_log)
    server = Server(settings=settings, reuse_port=True, worker=index)
    raise SystemExit(asyncio.run(server.serve(on_ready=lambda: ready.send_bytes(b"ready"))))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    if exitcode == 0:
        return "exited with code 0 unasked"
    return f"exited with code {exitcode}"


@dataclasses.dataclass
class _Worker:
    """One worker index: its current process (None while it waits to be restarted) and its backoff."""

    index: int
    process: BaseProcess | None = None
    pid: int = 0
    ready_pipe: Connection | None = None  # read end; the worker writes once it serves (EOF if it dies first)
    ready: bool = False
    reload_pending: bool = False  # a SIGHUP came while it was starting
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = BACKOFF_FIRST_S


class Supervisor:
    """Starts the workers and keeps them running until SIGTERM or SIGINT (see the module docstring). Runs in the
    main thread: it installs signal handlers."""

    def __init__(self, settings: Settings, port: int) -> None:
        from onnx_serve.core.metrics import WorkerRestarts

        self.worker_settings = dataclasses.replace(settings, grpc_port=port, metrics_port=-1)
        self.workers = [_Worker(index) for index in range(settings.workers)]
        self.restarts = WorkerRestarts(settings.workers)
        self.stopping = False
        self.exit_code = 0
        self._context = multiprocessing.get_context("spawn")
        ours = logging.getLogger("onnx_serve")
        self._log_args = (logging.getLevelName(ours.level).lower(), settings.log_format)
        self._announced = False
        self._signals: list[int] = []  # appended by the handler, handled by the loop

    def run(self) -> int:
        """Returns 0 after a requested stop, 2 for a worker's start-up mistake, 1 if a worker failed its drain."""
        # The handler only records the signal; the wake-up socket makes the loop's wait() return for it.
        wake_reader, wake_writer = socket.socketpair()
        wake_reader.setblocking(False)
        wake_writer.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (*STOP_SIGNALS, signal.SIGHUP)}
        try:
            for worker in self.workers:
                self._spawn(worker)
                log.info("worker %d started (pid %d)", worker.index, worker.pid)
            while self.workers_alive() or not self.stopping:
                with contextlib.suppress(BlockingIOError):
                    while wake_reader.recv(512):
                        pass
                self._handle_signals()
                self._restart_due()
                self._wait(wake_reader)
        except BaseException:
            for worker in self.workers:  # no worker outlives a supervisor that failed
                if worker.process is not None:
                    worker.process.terminate()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wake_reader.close()
            wake_writer.close()
        return self.exit_code

    def workers_alive(self) -> bool:
        return any(worker.process is not None for worker in self.workers)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _spawn(self, worker: _Worker) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_worker_main, name=f"onnx-serve-worker-{worker.index}",
                                        args=(self.worker_settings, worker.index, writer, *self._log_args))
        try:
            process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()  # the worker holds the only write end now: its death reads as EOF here
        assert process.pid is not None
        worker.process, worker.pid, worker.ready_pipe = process, process.pid, reader
        worker.ready, worker.reload_pending, worker.restart_at = False, False, None
        worker.started_at = time.monotonic()

    def _wait(self, wake_reader: socket.socket) -> None:
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        pipes = [w.ready_pipe for w in self.workers if w.ready_pipe is not None]
        sentinels = [w.process.sentinel for w in self.workers if w.process is not None]
        done = wait([wake_reader, *pipes, *sentinels], timeout)
        for worker in self.workers:
            if worker.ready_pipe is not None and worker.ready_pipe in done:
                self._read_ready(worker)
            if worker.process is not None and worker.process.sentinel in done:
                self._reap(worker)

    def _read_ready(self, worker: _Worker) -> None:
        assert worker.ready_pipe is not None
        try:
            worker.ready_pipe.recv_bytes()
            worker.ready = True
        except EOFError:  # it died before it was ready; its sentinel tells how
            pass
        worker.ready_pipe.close()
        worker.ready_pipe = None
        if worker.ready and worker.reload_pending and not self.stopping:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGHUP)
        if not self._announced and not self.stopping and all(w.ready for w in self.workers):
            log.info("server ready (%d workers)", len(self.workers))
            self._announced = True

    def _reap(self, worker: _Worker) -> None:
        from prometheus_client import multiprocess

        process = worker.process
        assert process is not None
        if worker.ready_pipe is not None and worker.ready_pipe.poll():  # ready, then died, in one wait
            self._read_ready(worker)
        process.join()
        exitcode, pid, now = process.exitcode, worker.pid, time.monotonic()
        process.close()
        worker.process = None
        if worker.ready_pipe is not None:
            worker.ready_pipe.close()
            worker.ready_pipe = None
        # Its live gauges (in flight, queue depth, ready) go; its counter and histogram files stay in the
        # aggregate, so no count it made is lost.
        multiprocess.mark_process_dead(pid)
        if self.stopping:
            # A worker still starting has no handler: our SIGTERM's default action is its expected end.
            if exitcode not in (0, -signal.SIGTERM, STARTUP_MISTAKE):
                log.error("worker %d (pid %d) %s while stopping", worker.index, pid, describe_exit(exitcode))
                self.exit_code = self.exit_code or 1
            return
        if exitcode == STARTUP_MISTAKE and not worker.ready:
            log.error("worker %d (pid %d) exited with code 2 before it was ready (a start-up mistake, logged "
                      "above): stopping the server", worker.index, pid)
            self.exit_code = STARTUP_MISTAKE
            self._stop(signal.SIGTERM)
            return
        if worker.ready and now - worker.started_at >= BACKOFF_RESET_AFTER_S:
            worker.backoff_s = BACKOFF_FIRST_S
        delay = worker.backoff_s
        worker.backoff_s = min(2 * delay, BACKOFF_MAX_S)
        worker.restart_at = now + delay
        worker.ready = False
        level = logging.WARNING if exitcode == 0 else logging.ERROR
        log.log(level, "worker %d (pid %d) %s: restarting it in %.1fs", worker.index, pid, describe_exit(exitcode),
                delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self.stopping:
                try:
                    self._spawn(worker)
                except OSError as exc:  # no process or pipe to be had now (EAGAIN, EMFILE): try again later
                    worker.restart_at = now + worker.backoff_s
                    log.error("worker %d could not be restarted (%s): trying again in %.1fs", worker.index,
                              exc.strerror or exc, worker.backoff_s)
                    worker.backoff_s = min(2 * worker.backoff_s, BACKOFF_MAX_S)
                    continue
                self.restarts.counts[worker.index] += 1
                log.info("worker %d restarted (pid %d)", worker.index, worker.pid)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            else:
                self._stop(signum)

    def _reload(self) -> None:
        if self.stopping:  # a draining worker has put SIGHUP's default action back: it would die of it
            return
        for worker in self.workers:
            if worker.process is None:  # waiting to restart: it will load the repository as it is then
                continue
            if worker.ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGHUP)
            else:  # it may have read the repository already; it reloads once it serves
                worker.reload_pending = True

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping = True
        for worker in self.workers:
            worker.restart_at = None
            if worker.process is not None:
                # SIGTERM whatever the supervisor got: a worker drains on either, and one still starting (or
                # that has just said it is ready) has no handler yet: SIGTERM's default action ends it quietly,
                # where SIGINT would be a KeyboardInterrupt traceback.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)


def _supervise(settings: Settings) -> int:
    from onnx_serve.core.metrics import start_exporter

    # Every port is taken before any worker starts, so a port in use is one line and exit 2, as with one process.
    # Bound without listening, with SO_REUSEPORT: they hold the ports, so a port 0 resolves to one port that every
    # worker (and every restarted one) then binds too; only listening sockets receive connections.
    try:
        reserved = bind_socket(settings.host, settings.grpc_port, True, "gRPC")
    except PortUnavailable as exc:
        log.error("%s", exc)
        return 2
    port = reserved.getsockname()[1]
    http_reserved = None
    if settings.http_port >= 0:
        try:
            http_reserved = bind_socket(settings.http_bind_host, settings.http_port, True, "HTTP")
        except PortUnavailable as exc:
            log.error("%s", exc)
            reserved.close()
            return 2
        settings = dataclasses.replace(settings, http_port=http_reserved.getsockname()[1])
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="onnx-serve-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    metrics_dir = Path(os.environ[MULTIPROC_ENV])
    for stale in metrics_dir.glob("*.db"):  # a previous run's files would be counted again
        stale.unlink()
    supervisor = Supervisor(settings, port)
    exporter = None
    if settings.metrics_port >= 0:
        try:
            exporter, _, metrics_port = start_exporter(settings.metrics_bind_host, settings.metrics_port, None,
                                                       extra=[supervisor.restarts])
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", settings.metrics_bind_host, settings.metrics_port,
                      exc.strerror or exc)
            for sock in (reserved, http_reserved):
                if sock is not None:
                    sock.close()
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
            return 2
        log.info("metrics listening on %s:%d", settings.metrics_bind_host, metrics_port)
    log.info("grpc listening on %s:%d (%d workers)", settings.host, port, settings.workers)
    if http_reserved is not None:
        log.info("http listening on %s:%d (%d workers)", settings.http_bind_host, settings.http_port, settings.workers)
    try:
        exit_code = supervisor.run()
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        for sock in (reserved, http_reserved):
            if sock is not None:
                sock.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    log.info("stopped")
    return exit_code
