"""The in-process server for API tests: onnx_serve.Server on 127.0.0.1 with ephemeral ports, its event loop in
a background thread, so tests talk to it with real gRPC clients and real /metrics scrapes, without the
seconds a subprocess takes to start. Tests of what a process does (signals, workers, the CLI) use
tests.helpers.serving instead."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_serve import Server, Settings


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
    server: Server
    _log: _Lines = field(default_factory=_Lines)

    def log(self) -> str:
        """What the onnx_serve loggers wrote while this server ran (every server's, if several run at once)."""
        return "".join(self._log.lines)

    @property
    def url(self) -> str:
        return self.server.grpc_url

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def pid(self) -> int:
        return os.getpid()

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())


@contextmanager
def in_process_server(repository: Path, **settings: Any) -> Iterator[InProcessServer]:
    """`settings` are onnx_serve.Settings fields, e.g. execution_providers=("CPUExecutionProvider",)."""
    chosen = Settings(**{"host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "grace_period_s": 5.0,
                         **settings})
    ours = logging.getLogger("onnx_serve")
    lines = _Lines()
    ours.addHandler(lines)
    level = ours.level
    ours.setLevel(logging.INFO)  # the CLI's default level, as the subprocess servers run
    try:
        with Server(repository, chosen) as server:
            yield InProcessServer(server, lines)
    finally:
        ours.removeHandler(lines)
        ours.setLevel(level)
