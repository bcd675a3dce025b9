"""Runs the server: in this process, or as N worker processes sharing one port (SO_REUSEPORT).

With workers, the parent reserves the port, starts the workers (spawned, so each has its own ONNX Runtime
sessions and a share of the CPU quota), serves the aggregated /metrics from prometheus_client's
multiprocess files, forwards SIGTERM/SIGINT/SIGHUP, and stops every worker if one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from onnx_serve.core.settings import Settings

log = logging.getLogger("onnx_serve.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_server(settings: Settings) -> int:
    if settings.workers <= 1:
        from onnx_serve.server import Server

        return asyncio.run(Server(settings=settings).serve())
    return _supervise(settings)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) with SO_REUSEPORT: holds the port, so port 0 resolves to one port that every
    worker then binds too. Only listening sockets receive connections, so this one never takes any."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_main(settings: Settings, index: int, ready: multiprocessing.Queue[int], log_level: str, log_format: str
                 ) -> None:
    from onnx_serve.logs import setup_logging
    from onnx_serve.server import Server

    setup_logging(log_level, log_format, settings.access_log)
    server = Server(settings=settings, reuse_port=True, worker=index)
    raise SystemExit(asyncio.run(server.serve(on_ready=lambda: ready.put(index))))


def _supervise(settings: Settings) -> int:
    from onnx_serve.core.metrics import start_exporter

    # Both ports are taken before any worker starts, so a port in use is one line and exit 2, as with one process.
    try:
        reserved = _reserve_port(settings.host, settings.grpc_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.grpc_port, exc.strerror or exc)
        return 2
    port = reserved.getsockname()[1]
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="onnx-serve-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    metrics_dir = Path(os.environ[MULTIPROC_ENV])
    for stale in metrics_dir.glob("*.db"):  # a previous run's files would be counted again
        stale.unlink()
    exporter = None
    if settings.metrics_port >= 0:
        try:
            exporter, _, metrics_port = start_exporter(settings.metrics_bind_host, settings.metrics_port, None)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", settings.metrics_bind_host, settings.metrics_port,
                      exc.strerror or exc)
            reserved.close()
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
            return 2
        log.info("metrics listening on %s:%d", settings.metrics_bind_host, metrics_port)
    worker_settings = dataclasses.replace(settings, grpc_port=port, metrics_port=-1)
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[int] = context.Queue()
    ours = logging.getLogger("onnx_serve")
    level, fmt = logging.getLevelName(ours.level).lower(), settings.log_format
    workers: list[BaseProcess] = []
    for index in range(settings.workers):
        process: BaseProcess = context.Process(target=_worker_main, args=(worker_settings, index, ready, level, fmt),
                                  name=f"onnx-serve-worker-{index}")
        process.start()
        workers.append(process)
    log.info("grpc listening on %s:%d (%d workers)", settings.host, port, settings.workers)

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    ready_workers: set[int] = set()
    announced = False
    exit_code = 0
    while any(p.is_alive() for p in workers):
        with contextlib.suppress(queue.Empty):
            while True:
                ready_workers.add(ready.get_nowait())
        if len(ready_workers) == len(workers) and not announced and not stopping:
            log.info("server ready (%d workers)", len(workers))
            announced = True
        for process in workers:
            if not process.is_alive() and process.exitcode not in (None, 0) and not stopping:
                log.error("worker %s exited with %s: stopping the others", process.name, process.exitcode)
                exit_code = 1
                forward(signal.SIGTERM, None)
        time.sleep(0.05)
    from prometheus_client import multiprocess

    for process in workers:
        multiprocess.mark_process_dead(process.pid)
        if process.exitcode not in (0, None):
            exit_code = exit_code or 1
    if exporter is not None:
        exporter.shutdown()
    reserved.close()
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)
    log.info("stopped")
    return exit_code
