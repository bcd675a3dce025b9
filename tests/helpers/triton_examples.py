"""Model repositories that mirror Triton's example repository (docs/examples/model_repository in
triton-inference-server/server): the same config.pbtxt texts, and onnx.helper models of the same signatures
(simple: INT32 add/sub; simple_int8; simple_string: BYTES digits -> Cast -> Add/Sub -> Cast back;
simple_identity: BYTES identity; densenet_onnx: a tiny classifier with densenet's names and shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from tests.helpers.serving import save_model, tensor

CLASSES = 1000


def add_sub_config(name: str, type_name: str) -> str:
    """Triton's simple / simple_int8 / simple_string config.pbtxt, as in its example repository."""
    return f'''name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{
    name: "INPUT0"
    data_type: {type_name}
    dims: [ 16 ]
  }},
  {{
    name: "INPUT1"
    data_type: {type_name}
    dims: [ 16 ]
  }}
]
output [
  {{
    name: "OUTPUT0"
    data_type: {type_name}
    dims: [ 16 ]
  }},
  {{
    name: "OUTPUT1"
    data_type: {type_name}
    dims: [ 16 ]
  }}
]
'''


DENSENET_CONFIG = '''name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]'''

SIMPLE_IDENTITY_CONFIG = '''name: "simple_identity"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
'''


def add_sub_model(path: Path, elem_type: int = TensorProto.INT32, width: int = 16) -> Path:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, [-1, width] (Triton's simple)."""
    io = [tensor(name, elem_type, [-1, width]) for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return save_model(helper.make_graph(nodes, "simple", io[:2], io[2:]), path)


def string_add_sub_model(path: Path) -> Path:
    """Triton's simple_string: BYTES digits, cast to INT32, added and subtracted, cast back to BYTES."""
    to_int, to_string = TensorProto.INT32, TensorProto.STRING
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=to_int),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=to_int),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=to_string),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=to_string),
    ]
    inputs = [tensor(name, to_string, [-1, 16]) for name in ("INPUT0", "INPUT1")]
    outputs = [tensor(name, to_string, [-1, 16]) for name in ("OUTPUT0", "OUTPUT1")]
    return save_model(helper.make_graph(nodes, "simple_string", inputs, outputs), path)


def string_identity_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "simple_identity",
                              [tensor("INPUT0", TensorProto.STRING, [-1, -1])],
                              [tensor("OUTPUT0", TensorProto.STRING, [-1, -1])])
    return save_model(graph, path)


def densenet_like_model(path: Path) -> Path:
    """data_0 FP32 [1, 3, 224, 224] -> fc6_1 FP32 [1, 1000, 1, 1]: mean colour -> a 1x1 convolution to 1000
    classes (fixed random weights), the names and shapes of Triton's densenet_onnx."""
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((CLASSES, 3, 1, 1)).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist())
    nodes = [helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
             helper.make_node("Conv", ["pooled", "w"], ["fc6_1"])]
    graph = helper.make_graph(nodes, "densenet_like", [tensor("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [tensor("fc6_1", TensorProto.FLOAT, [1, CLASSES, 1, 1])], initializer=[w])
    return save_model(graph, path)


def triton_repository(root: Path) -> Path:
    """simple, simple_int8, simple_string, simple_identity and densenet_onnx, as Triton's examples."""
    for name, elem_type, type_name in (("simple", TensorProto.INT32, "TYPE_INT32"),
                                       ("simple_int8", TensorProto.INT8, "TYPE_INT8")):
        add_sub_model(root / name / "1" / "model.onnx", elem_type)
        (root / name / "config.pbtxt").write_text(add_sub_config(name, type_name))
    string_add_sub_model(root / "simple_string" / "1" / "model.onnx")
    (root / "simple_string" / "config.pbtxt").write_text(add_sub_config("simple_string", "TYPE_STRING"))
    string_identity_model(root / "simple_identity" / "1" / "model.onnx")
    (root / "simple_identity" / "config.pbtxt").write_text(SIMPLE_IDENTITY_CONFIG)
    densenet_like_model(root / "densenet_onnx" / "1" / "model.onnx")
    (root / "densenet_onnx" / "config.pbtxt").write_text(DENSENET_CONFIG)
    (root / "densenet_onnx" / "densenet_labels.txt").write_text("".join(f"CLASS_{i}\n" for i in range(CLASSES)))
    return root
