"""The in-process server for API tests: onnx_serve.Server on 127.0.0.1 with ephemeral ports, its event loop in
a background thread, so tests talk to it with real gRPC clients and real /metrics scrapes, without the
seconds a subprocess takes to start. Tests of what a process does (signals, workers, the CLI) use
tests.helpers.serving instead."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_serve import Server, Settings


@dataclass
class InProcessServer:
    server: Server

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
    with Server(repository, chosen) as server:
        yield InProcessServer(server)
