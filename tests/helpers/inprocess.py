"""The in-process server for API tests: onnx_serve.Server on 127.0.0.1 with ephemeral ports, its event loop in
a background thread, so tests talk to it with real gRPC clients and real /metrics scrapes, without the
seconds a subprocess takes to start. Tests of what a process does (signals, workers, the CLI) use
tests.helpers.serving instead."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from onnx_serve import Server, Settings

T = TypeVar("T")


class _Lines(logging.Handler):
    """Keeps the onnx_serve log lines formatted as the CLI writes them, for tests that read the log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + "\n")


@dataclass
class InProcessServer:
    """A started Server under the names tests use for a subprocess one (ServerProcess): url, grpc_port,
    metrics_port, metrics_url, pid, log(), scrape(); and http_port, http_url (http://127.0.0.1:PORT; "" when
    HTTP is off). Ports and URLs are settled once it has started."""

    server: Server
    url: str
    grpc_port: int
    metrics_port: int
    metrics_url: str
    _log: _Lines = field(default_factory=_Lines)
    http_port: int = 0
    http_url: str = ""

    @classmethod
    def started(cls, server: Server, log: _Lines) -> InProcessServer:
        return cls(server, server.grpc_url, server.grpc_port, server.metrics_port, server.metrics_url, log,
                   server.http_port, server.http_url if server.http_port else "")

    def log(self) -> str:
        """What the onnx_serve loggers wrote while this server ran (every server's, if several run at once)."""
        return "".join(self._log.lines)

    @property
    def pid(self) -> int:
        return os.getpid()

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())


@contextmanager
def in_process_server(repository: Path, **settings: Any) -> Iterator[InProcessServer]:
    """`settings` are onnx_serve.Settings fields, e.g. execution_providers=("CPUExecutionProvider",)."""
    chosen = Settings(**{"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0, "grace_period_s": 5.0,
                         "drain_delay_s": 0.0,
                         **settings})
    ours = logging.getLogger("onnx_serve")
    lines = _Lines()
    ours.addHandler(lines)
    level = ours.level
    ours.setLevel(logging.INFO)  # the CLI's default level, as the subprocess servers run
    try:
        with Server(repository, chosen) as server:
            yield InProcessServer.started(server, lines)
    finally:
        ours.removeHandler(lines)
        ours.setLevel(level)


CPU_ONLY = ("CPUExecutionProvider",)


def server_fixture(**settings: Any) -> object:
    """A module-scoped `server` fixture: the in-process server on the module's `repository` fixture, on the CPU
    unless `settings` (onnx_serve.Settings fields) say otherwise. In a test module: `server = server_fixture()`."""

    @pytest.fixture(scope="module")
    def server(repository: Path) -> Iterator[InProcessServer]:
        with in_process_server(repository, **{"execution_providers": CPU_ONLY, **settings}) as running:
            yield running

    return server


def connection_fixture(connect: Callable[[str], AbstractContextManager[T]]) -> object:
    """A module-scoped fixture of `connect(server.url)` (a client, a channel), closed at the module's end; e.g.
    `client = connection_fixture(grpc.insecure_channel)`."""

    @pytest.fixture(scope="module")
    def connection(server: InProcessServer) -> Iterator[T]:
        with connect(server.url) as connected:
            yield connected

    return connection
