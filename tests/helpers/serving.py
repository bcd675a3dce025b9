"""Test harness: a real `onnx-serve` process on 127.0.0.1 with ephemeral ports (started by
onnx_serve.bench.launch, which the benchmark harness uses too), and ONNX models built with onnx.helper. Tests
talk to it with real clients (tritonclient, our client, HTTP scrapes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from onnx_serve.bench.launch import ServerProcess as ServerProcess
from onnx_serve.bench.launch import running_server as running_server
from onnx_serve.bench.launch import start_server as start_server

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = ROOT / "models"


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


def _counting_loop_body() -> onnx.GraphProto:
    """A Loop body that adds 1 to its accumulator per iteration: the busy work of slow_model and spin_model."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [tensor("i", TensorProto.INT64, []), tensor("cond_in", TensorProto.BOOL, []),
         tensor("acc_in", TensorProto.FLOAT, [])],
        [tensor("cond_out", TensorProto.BOOL, []), tensor("acc_out", TensorProto.FLOAT, [])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )


def spin_model(path: Path, milliseconds: int) -> Path:
    """Like slow_model, but a run takes roughly `milliseconds` times the input's largest value: the warm-up
    (zeros) is instant, a call with x = 1 keeps an instance busy."""
    body = _counting_loop_body()
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["largest"], keepdims=0),
        helper.make_node("Mul", ["largest", "per_unit"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["iters"], to=TensorProto.INT64),
        helper.make_node("Loop", ["iters", "cond", "zero"], ["total"], body=body),
        helper.make_node("Mul", ["x", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "total"], ["y"]),
    ]
    constants = [helper.make_tensor("per_unit", TensorProto.FLOAT, [], [milliseconds * 1000.0]),
                 helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
                 helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "spin", [tensor("x", TensorProto.FLOAT, ["N", 2])],
                              [tensor("y", TensorProto.FLOAT, ["N", 2])], initializer=constants)
    return save_model(graph, path)


def slow_model(path: Path, milliseconds: int) -> Path:
    """Sleeps roughly `milliseconds` per run (a big loop of Adds), to keep requests in flight."""
    iterations = helper.make_tensor("iters", TensorProto.INT64, [], [milliseconds * 1000])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    body = _counting_loop_body()
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
