"""The HTTP edge's figures (issue #13 §4), one run, one client (h2load), one machine: HTTP binary / JSON infer
and gRPC unary at c=1 and c=32 on the bundled MNIST CNN, Classify over HTTP and gRPC, the REST of KServe and
MLServer, and uvicorn's httptools protocol against its h11 one. Writes bench-results/http.json and, with
--write-doc, the "HTTP edge" section of docs/benchmarks.md (between its markers; nothing else is touched).

    .venv/bin/python -m benchmarks.http --write-doc                 # the full run (~8 min on 2 cores)
    .venv/bin/python -m benchmarks.http --seconds 2 --repeats 1 --skip-peers   # a smoke run

Each pass starts every server in turn (onnx-serve, onnx-serve with h11, KServe, MLServer), measures its points
and stops it; the second pass runs servers and points in the reverse order, and the report gives both values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnx_serve.bench.launch import ServerProcess, launch, serve_command

from benchmarks import http_doc
from benchmarks.http_load import (
    Request,
    binary_infer,
    check_grpc,
    check_http,
    grpc_classify,
    grpc_infer,
    http_classify,
    json_infer,
    run_point,
)
from benchmarks.models import ROOT

PEERS = Path(os.environ.get("ONNX_SERVE_PEERS", ROOT.parent / "shared" / "peers"))
MODEL = "mnist-cnn"
LEVELS = (1, 32)
OURS: dict[str, Callable[[str], Request]] = {
    "http-binary": binary_infer, "http-json": json_infer, "grpc": grpc_infer,
    "http-classify": http_classify, "grpc-classify": grpc_classify}
H11_MODES = ("http-binary", "http-json")
PEER_MODES = ("http-json",)  # the V2 REST request every server takes; MLServer has no binary extension


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ready(url: str, process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def start(name: str, work: Path) -> tuple[ServerProcess, str, str]:
    """Starts server `name`; returns it, its HTTP host:port and its gRPC host:port."""
    log = work / f"{name}.log"
    if name in ("onnx-serve", "onnx-serve-h11"):
        command = serve_command(ROOT / "models")
        if name == "onnx-serve-h11":
            command[1:3] = ["-m", "benchmarks.http_h11"]
        server = launch(command, cwd=ROOT, log_path=log, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'service'}"})
        deadline = time.monotonic() + 60
        while not (server.http_port and server.grpc_port) and time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{server.log()}")
            time.sleep(0.05)
        wait_http_ready(f"{server.http_url}/v2/models/{MODEL}/ready", server.process)
        return server, f"127.0.0.1:{server.http_port}", server.url
    models = work / "peer-models"
    models.mkdir(exist_ok=True)
    if not (models / f"{MODEL}.onnx").exists():
        (models / f"{MODEL}.onnx").symlink_to(ROOT / "models" / MODEL / "1" / "model.onnx")
    port = free_port()
    script = {"kserve": ["kserve/start.sh", "--enable_latency_logging", "false"],
              "mlserver": ["mlserver/start.sh", "--workers", "0", "--debug", "false"]}[name]
    command = [str(PEERS / script[0]), "--port", str(port), "--models", MODEL, *script[1:]]
    server = launch(command, grpc_port=port, log_path=log,
                    env={"PEER_MODELS_DIR": str(models), "KSERVE_LOGLEVEL": "WARNING"})
    wait_http_ready(f"http://127.0.0.1:{port + 1}/v2/models/{MODEL}/ready", server.process)
    return server, f"127.0.0.1:{port + 1}", server.url


def measure(name: str, modes: tuple[str, ...], args: argparse.Namespace, work: Path, reverse: bool,
            results: dict[str, list[dict[str, Any]]]) -> None:
    server, http_at, grpc_at = start(name, work)
    try:
        points = [(mode, c) for mode in modes for c in LEVELS]
        for mode, concurrency in reversed(points) if reverse else points:
            request = OURS[mode](MODEL)
            if request.kind == "grpc":
                check_grpc(grpc_at, request)
            else:
                check_http(f"http://{http_at}", request)
            target = grpc_at if request.kind == "grpc" else http_at
            point = run_point(request, target, concurrency, server.pid, args.seconds, args.warmup)
            key = f"{name}/{mode}/c{concurrency}"
            results.setdefault(key, []).append(point)
            print(f"{key:40} {point['req_s']:9.0f} req/s  p50 {point['p50_ms']:.2f} ms  "
                  f"{point['server_cpu_us_per_req']:.0f} us CPU/req  {point['server_cores']} cores  "
                  f"failed {point['failed']} non-2xx {point['non_2xx']}", flush=True)
    finally:
        server.stop(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--repeats", type=int, default=2, help="passes, each in the reverse order of the last")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-h11", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "http.json")
    parser.add_argument("--write-doc", action="store_true", help="rewrite the HTTP edge section of the docs")
    args = parser.parse_args(argv)
    servers: list[tuple[str, tuple[str, ...]]] = [("onnx-serve", tuple(OURS))]
    if not args.skip_h11:
        servers.append(("onnx-serve-h11", H11_MODES))
    if not args.skip_peers:
        servers += [("kserve", PEER_MODES), ("mlserver", PEER_MODES)]
    work = Path(os.environ.get("HTTPBENCH_WORK", "/tmp/httpbench-work"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    for repeat in range(args.repeats):
        reverse = repeat % 2 == 1
        for name, modes in reversed(servers) if reverse else servers:
            try:
                measure(name, modes, args, work, reverse, results)
            except Exception as error:  # a peer that fails is reported, not the end of the run
                print(f"{name}: {error}", flush=True)
                results.setdefault(f"{name}/failed", []).append({"error": str(error)[:500]})
    document = {"argv": sys.argv[1:], "started": started, "seconds": args.seconds, "warmup": args.warmup,
                "repeats": args.repeats, "points": results, "machine": http_doc.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1))
    print(f"wrote {args.out}")
    if args.write_doc:
        http_doc.write_section(ROOT / "docs" / "benchmarks.md", document)
        print("wrote the HTTP edge section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
