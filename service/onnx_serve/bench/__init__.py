"""`onnx-serve bench`: a closed-loop load generator for any KServe V2 gRPC server, the server-side breakdown
from ModelStatistics and CPU probes, raw ONNX Runtime as the ceiling, and a launcher that starts a server
and waits for it (used by the tests and the benchmark harness too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_serve._lazy import lazy_exports

if TYPE_CHECKING:
    from onnx_serve.bench.cli import add_bench_parser, run_bench
    from onnx_serve.bench.launch import ServerProcess, running_server, start_server
    from onnx_serve.bench.raw import run_raw

_EXPORTS = {
    "add_bench_parser": "onnx_serve.bench.cli",
    "run_bench": "onnx_serve.bench.cli",
    "ServerProcess": "onnx_serve.bench.launch",
    "running_server": "onnx_serve.bench.launch",
    "start_server": "onnx_serve.bench.launch",
    "run_raw": "onnx_serve.bench.raw",
}
__all__ = ["ServerProcess", "add_bench_parser", "run_bench", "run_raw", "running_server", "start_server"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
