"""The servers of benchmarks.run: onnx-serve (`onnx-serve serve`, 1 or N workers) and the peers of
../shared/peers (their start.sh), each on 127.0.0.1 with a free port, ready once ModelMetadata answers for the
model (the same start-up measure for every server)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from onnx_serve.bench.launch import ServerProcess, launch, start_server, wait_for_model

from benchmarks.models import ROOT

PEERS = Path(os.environ.get("ONNX_SERVE_PEERS", ROOT.parent / "shared" / "peers"))
# How each peer is started (after --port and --models): the settings named in ../shared/peers/README.md.
PEER_ARGS: dict[str, list[str]] = {
    "null": [],
    "pytriton": ["--max-batch", "64", "--queue-delay-us", "0"],
    "mlserver": ["--workers", "0", "--batching", "off", "--debug", "false"],
    "mlserver-batching": ["--workers", "0", "--batching", "on", "--debug", "false"],
    "kserve": ["--enable_latency_logging", "false"],
}
# The peer's start.sh folder, when the variant's name is not the folder's.
PEER_SCRIPT = {"mlserver-batching": "mlserver"}
# Triton's first start compiles nothing but is slow to load its Python-backend stub; the others start in seconds
# once their venv exists (the first start creates it: pip, minutes).
PEER_READY_TIMEOUT_S = 600.0
# tritonserver waits for its models to unload, MLServer for its workers: longer than onnx-serve's drain.
STOP_TIMEOUT_S = 40.0


@dataclass
class Server:
    """A server of the run, and how long it took from launch until ModelMetadata answered for the model."""

    name: str
    running: ServerProcess
    startup_s: float
    workers: int = 1  # onnx-serve's --workers (peers: 1)
    # whose Prometheus counters benchmarks/recount.py reads, and where: where ModelStatistics cannot vouch
    counters: tuple[str, str] | None = None

    def scrape(self) -> str:
        assert self.counters is not None
        with urllib.request.urlopen(self.counters[1], timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # it is killed by then
            self.running.stop(timeout=STOP_TIMEOUT_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(name: str, running: ServerProcess, model: str, log: Path, timeout: float) -> Server:
    """Waits until ModelMetadata answers for `model`, the first moment a client could use it: start-up time is
    measured that way for every server alike."""
    try:
        wait_for_model(running.url, model, timeout=timeout, process=running.process)
    except Exception as exc:
        running.process.kill()
        raise RuntimeError(f"{name}: {exc}; see {log}") from None
    return Server(name, running, time.monotonic() - running.started)


def start_onnx_serve(name: str, repository: Path, model: str, logs: Path, workers: int = 1) -> Server:
    log = logs / f"{name}.log"
    try:
        running = start_server(repository, "--workers", str(workers), "--execution-providers", "cpu",
                               "--grace-period", "1", cwd=ROOT, log_path=log, new_session=True)
    except AssertionError as exc:  # its message holds the whole log, which is in the file already
        raise RuntimeError(f"{name}: {str(exc).splitlines()[0]}; see {log}") from None
    server = ready(name, running, model, log, timeout=60)
    server.workers = workers
    if workers > 1:  # ModelStatistics on one connection see one worker; the supervisor's /metrics see all
        server.counters = ("onnx-serve", running.metrics_url)
    return server


def start_peer(kind: str, name: str, models_dir: Path, model: str, logs: Path) -> Server:
    """`kind` is a key of PEER_ARGS; `models_dir` holds `model`.onnx."""
    port = free_port()
    script = PEERS / PEER_SCRIPT.get(kind, kind) / "start.sh"
    env = {"PEER_MODELS_DIR": str(models_dir), "KSERVE_LOGLEVEL": "WARNING",
           "BENCH_RUN_DIR": str(models_dir.parent / f"peer-run-{port}")}
    log = logs / f"{name}.log"
    running = launch([str(script), "--port", str(port), "--models", model, *PEER_ARGS[kind]], grpc_port=port,
                     env=env, cwd=models_dir.parent, log_path=log, new_session=True)
    server = ready(name, running, model, log, timeout=PEER_READY_TIMEOUT_S)
    if kind == "pytriton":  # PyTriton restricts the statistics extension to a random token; /metrics are open
        server.counters = ("triton", f"http://127.0.0.1:{port + 2}/metrics")
    return server


def peer_command(kind: str) -> str:
    """How a peer was started, for the report."""
    script = PEER_SCRIPT.get(kind, kind)
    return " ".join(["PEER_MODELS_DIR=DIR", f"../shared/peers/{script}/start.sh", "--port PORT --models NAME",
                     *PEER_ARGS[kind]])
