"""Start a server process and wait until it serves: `onnx-serve serve` on 127.0.0.1 with ephemeral ports, or any
KServe V2 server (the benchmark harness's peers). The test suite, the benchmark harness (benchmarks/),
scripts/soak.py and `onnx-serve bench` (which waits for a model it did not start) all use this one copy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from onnx_serve.protos.inference import grpc_service_pb2 as pb

_LISTEN = re.compile(r"(grpc|http|metrics) listening on [^\s]+:(\d+)")
_READY = "server ready|server started"
# What a server that is still starting, or still loading the model, answers; anything else is final.
_NOT_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)


class ServerNotReady(RuntimeError):
    """The server exited, or the model did not answer ModelMetadata in time."""


@dataclass
class ServerProcess:
    """A server process we started: its output so far (stdout and stderr, line by line) and the ports that
    onnx-serve logged (or that the caller chose, for other servers)."""

    process: subprocess.Popen[str]
    grpc_port: int = 0
    metrics_port: int = 0
    lines: list[str] = field(default_factory=list)
    http_port: int = 0  # 0 until onnx-serve logs it (never for other servers)
    started: float = field(default_factory=time.monotonic)  # time.monotonic() at launch

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return "".join(self.lines)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            if self.process.poll() is not None and not any(regex.search(x) for x in self.lines):
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signals the server and waits for it; one that outlasts ``timeout`` is killed, and the timeout raised."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def launch(command: Sequence[str], *, grpc_port: int = 0, env: dict[str, str] | None = None,
           cwd: Path | None = None, log_path: Path | None = None, new_session: bool = False) -> ServerProcess:
    """Starts ``command`` (``env`` added to this environment); a thread collects its output into ``lines``, copies
    it to ``log_path`` when given, and picks up the ports onnx-serve logs. ``new_session`` keeps a terminal's
    Ctrl-C away from it, so the caller stops it in order."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", cwd=cwd, env={**os.environ, **(env or {})},
                               start_new_session=new_session)
    server = ServerProcess(process, grpc_port)
    sink = log_path.open("w") if log_path is not None else None
    threading.Thread(target=_collect, args=(server, sink), daemon=True).start()
    return server


def _collect(server: ServerProcess, sink: IO[str] | None) -> None:
    assert server.process.stdout is not None
    try:
        for line in server.process.stdout:
            server.lines.append(line)
            if sink is not None:
                sink.write(line)
                sink.flush()
            match = _LISTEN.search(line)
            if match:
                setattr(server, f"{match.group(1)}_port", int(match.group(2)))
    finally:
        if sink is not None:
            sink.close()


def serve_command(repository: Path, *args: str) -> list[str]:
    """`onnx-serve serve` on 127.0.0.1, gRPC, HTTP and metrics on ports the kernel picks; ``args`` come last, so
    they override these."""
    return [sys.executable, "-m", "onnx_serve", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
            "--drain-delay", "0", *args]


def start_server(repository: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True,
                 timeout: float = 60.0, cwd: Path | None = None, log_path: Path | None = None,
                 new_session: bool = False) -> ServerProcess:
    """Starts onnx-serve on ``repository`` (see :func:`launch`) and returns once it logs that it is ready
    (``wait_ready``: every model loaded) or that gRPC listens; an AssertionError with its log if it exits or
    takes longer than ``timeout``."""
    server = launch(serve_command(repository, *args), env=env, cwd=cwd, log_path=log_path, new_session=new_session)
    deadline = time.monotonic() + timeout
    pattern = re.compile(_READY if wait_ready else "grpc listening")
    while time.monotonic() < deadline:
        if any(pattern.search(line) for line in server.lines) and server.grpc_port:
            return server
        if server.process.poll() is not None:
            time.sleep(0.1)  # the last lines of its output
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not up in {timeout}s:\n{server.log()}")


@contextmanager
def running_server(repository: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True,
                   timeout: float = 60.0, cwd: Path | None = None) -> Iterator[ServerProcess]:
    """:func:`start_server`, stopped (SIGTERM) on leaving the block unless the block stopped it."""
    server = start_server(repository, *args, env=env, wait_ready=wait_ready, timeout=timeout, cwd=cwd)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def wait_for_model(url: str, model: str, version: str = "", timeout: float = 30.0,
                   process: subprocess.Popen[str] | None = None) -> pb.ModelMetadataResponse:
    """Polls ModelMetadata until ``model`` answers: the first moment a client could use it. While the server is
    not up or the model not loaded it retries, for ``timeout`` seconds (one try at least); with ``process``
    (a server we started) it gives up as soon as that exits, and retries any error, since a peer server
    that is still starting may answer anything. Raises :class:`ServerNotReady`."""
    deadline = time.monotonic() + timeout
    request = pb.ModelMetadataRequest(name=model, version=version)
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                   request_serializer=pb.ModelMetadataRequest.SerializeToString,
                                   response_deserializer=pb.ModelMetadataResponse.FromString)
        while True:
            if process is not None and process.poll() is not None:
                raise ServerNotReady(f"server exited with {process.returncode}")
            try:
                response: pb.ModelMetadataResponse = call(request, timeout=5)
                return response
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()  # a unary call's RpcError is a grpc.Call too
                if (process is None and code not in _NOT_YET) or time.monotonic() >= deadline:
                    raise ServerNotReady(f"ModelMetadata for {model!r} at {url}: {code.name}: {details}") from None
            time.sleep(0.02)
