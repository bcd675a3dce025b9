"""Test harness: a real `onnx-serve` process on 127.0.0.1 with ephemeral ports, and ONNX models built
with onnx.helper. Tests talk to it with real clients (tritonclient, our client, HTTP scrapes)."""

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

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = ROOT / "models"
_LISTEN = re.compile(r"(grpc|metrics) listening on [^\s]+:(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int = 0
    metrics_port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

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
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_server(repository: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True,
                 timeout: float = 60.0) -> ServerProcess:
    command = [sys.executable, "-m", "onnx_serve", "serve", "--model-repository", str(repository),
               "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env={**os.environ, **(env or {})})
    server = ServerProcess(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line)
            match = _LISTEN.search(line)
            if match and match.group(1) == "grpc":
                server.grpc_port = int(match.group(2))
            elif match:
                server.metrics_port = int(match.group(2))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    pattern = "server ready|server started" if wait_ready else "grpc listening"
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in server.lines) and server.grpc_port:
            return server
        if process.poll() is not None:
            time.sleep(0.1)
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not up in {timeout}s:\n{server.log()}")


@contextmanager
def running_server(repository: Path, *args: str, **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(repository, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL if kwargs.get("kill") else signal.SIGTERM)


# ---------------------------------------------------------------------------------------------- models

def save_model(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tensor(name: str, elem_type: int, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def add_model(path: Path, elem_type: int = TensorProto.FLOAT, shape: Sequence[int | str] = ("N", 4)) -> Path:
    """sum = a + b."""
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "add",
                              [tensor("a", elem_type, shape), tensor("b", elem_type, shape)],
                              [tensor("sum", elem_type, shape)])
    return save_model(graph, path)


def identity_model(path: Path, elem_type: int, shape: Sequence[int | str] = ("N", 3)) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [tensor("x", elem_type, shape)], [tensor("y", elem_type, shape)])
    return save_model(graph, path)


def matmul_model(path: Path, weights: Sequence[Sequence[float]]) -> Path:
    """y = x @ W with W of shape (k, m); x is [N, k]."""
    k, m = len(weights), len(weights[0])
    w = helper.make_tensor("W", TensorProto.FLOAT, [k, m], [v for row in weights for v in row])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
                              [tensor("x", TensorProto.FLOAT, ["N", k])], [tensor("y", TensorProto.FLOAT, ["N", m])],
                              initializer=[w])
    return save_model(graph, path)


def conv_classifier_model(path: Path, classes: int = 3, size: int = 8) -> Path:
    """A tiny image classifier: Conv(1->classes, 3x3) -> GlobalAveragePool -> Flatten -> Softmax.
    Input [N, 1, size, size] float32, output 'probabilities' [N, classes]."""
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.standard_normal((classes, 1, 3, 3)).astype(np.float32)
    weight = helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist())
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "conv", [tensor("input", TensorProto.FLOAT, ["N", 1, size, size])],
                              [tensor("probabilities", TensorProto.FLOAT, ["N", classes])], initializer=[weight])
    return save_model(graph, path)


def int64_bool_model(path: Path) -> Path:
    """out = where(mask, x, 0) with x INT64 [N, 3] and mask BOOL [N, 3]."""
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    graph = helper.make_graph([helper.make_node("Where", ["mask", "x", "zero"], ["out"])], "where",
                              [tensor("x", TensorProto.INT64, ["N", 3]), tensor("mask", TensorProto.BOOL, ["N", 3])],
                              [tensor("out", TensorProto.INT64, ["N", 3])], initializer=[zero])
    return save_model(graph, path)


def fixed_shape_model(path: Path) -> Path:
    """No batch axis: x FP32 [2, 2] -> y = x + x."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "fixed",
                              [tensor("x", TensorProto.FLOAT, [2, 2])], [tensor("y", TensorProto.FLOAT, [2, 2])])
    return save_model(graph, path)


def string_model(path: Path) -> Path:
    """BYTES in and out: y = Identity(x), x STRING [N]."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "strings",
                              [tensor("x", TensorProto.STRING, ["N"])], [tensor("y", TensorProto.STRING, ["N"])])
    return save_model(graph, path)


def slow_model(path: Path, milliseconds: int) -> Path:
    """Sleeps roughly `milliseconds` per run (a big loop of Adds), to keep requests in flight."""
    iterations = helper.make_tensor("iters", TensorProto.INT64, [], [milliseconds * 1000])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [tensor("i", TensorProto.INT64, []), tensor("cond_in", TensorProto.BOOL, []),
         tensor("acc_in", TensorProto.FLOAT, [])],
        [tensor("cond_out", TensorProto.BOOL, []), tensor("acc_out", TensorProto.FLOAT, [])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["start"], keepdims=0),
        helper.make_node("Loop", ["iters", "cond", "start"], ["total"], body=body),
        helper.make_node("Mul", ["x", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "total"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "slow", [tensor("x", TensorProto.FLOAT, ["N", 2])],
                              [tensor("y", TensorProto.FLOAT, ["N", 2])],
                              initializer=[iterations, cond, helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return save_model(graph, path)
