"""Every RPC of the KServe V2 GRPCInferenceService, driven by tritonclient (and by our own stubs where
tritonclient cannot say it: typed `contents`) against a real server, numbers checked against in-process
ONNX Runtime."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper
from onnx_serve import __version__
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import InProcessServer, connection_fixture, in_process_server, server_fixture
from tests.helpers.serving import (
    ROOT,
    add_model,
    conv_classifier_model,
    fixed_shape_model,
    identity_model,
    int64_bool_model,
    matmul_model,
    save_model,
    string_model,
    tensor,
)

SERVER_FLAGS = ("--execution-providers", "cpu")
NUMERIC = {  # V2 datatype -> (ONNX element type, numpy dtype, typed contents field)
    "BOOL": (TensorProto.BOOL, np.bool_, "bool_contents"),
    "UINT8": (TensorProto.UINT8, np.uint8, "uint_contents"),
    "UINT16": (TensorProto.UINT16, np.uint16, "uint_contents"),
    "UINT32": (TensorProto.UINT32, np.uint32, "uint_contents"),
    "UINT64": (TensorProto.UINT64, np.uint64, "uint64_contents"),
    "INT8": (TensorProto.INT8, np.int8, "int_contents"),
    "INT16": (TensorProto.INT16, np.int16, "int_contents"),
    "INT32": (TensorProto.INT32, np.int32, "int_contents"),
    "INT64": (TensorProto.INT64, np.int64, "int64_contents"),
    "FP16": (TensorProto.FLOAT16, np.float16, None),
    "FP32": (TensorProto.FLOAT, np.float32, "fp32_contents"),
    "FP64": (TensorProto.DOUBLE, np.float64, "fp64_contents"),
}
WEIGHTS = [[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]
MNIST = ROOT / "models" / "mnist-cnn"


def scale_model(path: Path, factor: float) -> Path:
    """y = x * factor, x FP32 [N, 2]: versions of one model told apart by their answers."""
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
                              [tensor("x", TensorProto.FLOAT, ["N", 2])], [tensor("y", TensorProto.FLOAT, ["N", 2])],
                              initializer=[k])
    return save_model(graph, path)


def two_output_model(path: Path) -> Path:
    """sum = a + b, diff = a - b, FP32 [N, 2]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Sub", ["a", "b"], ["diff"])], "two",
        [tensor("a", TensorProto.FLOAT, ["N", 2]), tensor("b", TensorProto.FLOAT, ["N", 2])],
        [tensor("sum", TensorProto.FLOAT, ["N", 2]), tensor("diff", TensorProto.FLOAT, ["N", 2])])
    return save_model(graph, path)


def build_repository(root: Path) -> Path:
    add_model(root / "add" / "1" / "model.onnx")  # no config.yaml: everything read from the graph
    add_model(root / "stats" / "1" / "model.onnx")
    add_model(root / "unloadable" / "1" / "model.onnx")
    add_model(root / "batched" / "1" / "model.onnx")
    (root / "batched" / "config.yaml").write_text(
        "max_batch_size: 8\n"
        "dynamic_batching: {max_queue_delay_microseconds: 1000000, preferred_batch_size: [4]}\n"
        "instance_group: {count: 2}\n")
    matmul_model(root / "matmul" / "1" / "model.onnx", WEIGHTS)
    conv_classifier_model(root / "conv" / "1" / "model.onnx")
    int64_bool_model(root / "where" / "1" / "model.onnx")
    fixed_shape_model(root / "fixed" / "1" / "model.onnx")
    string_model(root / "strings" / "1" / "model.onnx")
    two_output_model(root / "two" / "1" / "model.onnx")
    for name, (elem_type, _, _) in NUMERIC.items():
        identity_model(root / f"id_{name.lower()}" / "1" / "model.onnx", elem_type)
    for policy, config in (("latest", None), ("all", "version_policy: {all: {}}\n"),
                           ("specific", "version_policy: {specific: {versions: [1, 3]}}\n")):
        for version in (1, 2, 3):
            scale_model(root / f"versions_{policy}" / str(version) / "model.onnx", float(version))
        if config:
            (root / f"versions_{policy}" / "config.yaml").write_text(config)
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    add_model(root / "badconfig" / "1" / "model.onnx")
    (root / "badconfig" / "config.yaml").write_text("max_batch_size: 4\nbogus_knob: 1\n")
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


server = server_fixture()
client = connection_fixture(triton.InferenceServerClient)


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def grpc_code(excinfo: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(excinfo.value.status()).removeprefix("StatusCode.")


# ------------------------------------------------------------------------------------------ server RPCs

def test_server_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready() is False  # as Triton's strict readiness: 'corrupt' and 'badconfig' failed
    metadata = client.get_server_metadata()
    assert metadata.name == "onnx-serve"
    assert metadata.version == __version__
    assert {"model_repository", "statistics", "model_configuration"} <= set(metadata.extensions)


def test_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("add")
    assert client.is_model_ready("add", "1")
    assert client.is_model_ready("corrupt") is False
    assert client.is_model_ready("badconfig") is False
    # Triton answers ready=false (no error) for unknown models and versions; so do we.
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("add", "7") is False


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("where")
    assert (metadata.name, metadata.platform, list(metadata.versions)) == ("where", "onnxruntime_onnx", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("x", "INT64", [-1, 3]), ("mask", "BOOL", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("out", "INT64", [-1, 3])]
    fixed = client.get_model_metadata("fixed")
    assert [list(t.shape) for t in fixed.inputs] == [[2, 2]]
    assert client.get_model_metadata("strings").inputs[0].datatype == "BYTES"
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_metadata("no_such_model")
    assert grpc_code(excinfo) == "NOT_FOUND"


# ------------------------------------------------------------------------------------------ inference

@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_infer_every_datatype_raw_via_tritonclient(client: triton.InferenceServerClient, repository: Path,
                                                   datatype: str) -> None:
    model = "strings" if datatype == "BYTES" else f"id_{datatype.lower()}"
    if datatype == "BYTES":
        x = np.array([b"hello", b"", "gr\u00fc\u00df".encode()], dtype=np.object_)
    else:
        x = sample(datatype, (2, 3))
    result = client.infer(model, [infer_input("x", x, datatype)], request_id=f"raw-{datatype}")
    response = result.get_response()
    assert response.id == f"raw-{datatype}"
    assert response.outputs[0].datatype == datatype
    got = result.as_numpy("y")
    if datatype == "BYTES":  # ONNX Runtime's Python API takes and gives str for string tensors
        text = np.array([v.decode() for v in x], dtype=object)
        expected = ort_run(repository / model / "1" / "model.onnx", {"x": text})["y"]
        assert [bytes(v) for v in got] == [v.encode() for v in expected] == list(x)
    else:
        expected = ort_run(repository / model / "1" / "model.onnx", {"x": x})["y"]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("datatype", [d for d, (_, _, field) in NUMERIC.items() if field] + ["BYTES"])
def test_infer_every_datatype_typed_contents(v2_stub_for: Callable, server: InProcessServer, repository: Path,
                                             datatype: str) -> None:
    model = "strings" if datatype == "BYTES" else f"id_{datatype.lower()}"
    x = np.array([b"a", b"\x00z\xc3\xa9"], dtype=np.object_) if datatype == "BYTES" else sample(datatype, (2, 3))
    request = pb.ModelInferRequest(model_name=model, id="typed")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    field = "bytes_contents" if datatype == "BYTES" else NUMERIC[datatype][2]
    getattr(tensor.contents, field).extend(x.ravel().tolist())
    response = v2_stub_for(server.url).ModelInfer(request, timeout=10)
    assert (response.id, response.model_name, response.model_version) == ("typed", model, "1")
    output = response.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("y", datatype, list(x.shape))
    if datatype == "BYTES":
        assert response.raw_output_contents[0] == b"".join(len(v).to_bytes(4, "little") + v for v in x)
        return
    got = np.frombuffer(response.raw_output_contents[0], dtype=NUMERIC[datatype][1]).reshape(output.shape)
    np.testing.assert_array_equal(got, ort_run(repository / model / "1" / "model.onnx", {"x": x})["y"])


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(len(datatype))
    dtype = NUMERIC[datatype][1]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def test_add_matmul_conv_and_where_match_onnxruntime(client: triton.InferenceServerClient, repository: Path) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 4), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    got = client.infer("add", [infer_input("a", a, "FP32"), infer_input("b", b, "FP32")]).as_numpy("sum")
    np.testing.assert_array_equal(got, ort_run(repository / "add/1/model.onnx", {"a": a, "b": b})["sum"])

    x = rng.standard_normal((5, 3), dtype=np.float32)
    got = client.infer("matmul", [infer_input("x", x, "FP32")]).as_numpy("y")
    np.testing.assert_allclose(got, x @ np.array(WEIGHTS, dtype=np.float32), atol=1e-5)
    np.testing.assert_array_equal(got, ort_run(repository / "matmul/1/model.onnx", {"x": x})["y"])

    images = rng.random((2, 1, 8, 8), dtype=np.float32)
    got = client.infer("conv", [infer_input("input", images, "FP32")]).as_numpy("probabilities")
    expected = ort_run(repository / "conv/1/model.onnx", {"input": images})["probabilities"]
    assert np.max(np.abs(got - expected)) <= 1e-5

    values = np.arange(6, dtype=np.int64).reshape(2, 3) - 3
    mask = np.array([[True, False, True], [False, True, False]])
    got = client.infer("where", [infer_input("x", values, "INT64"), infer_input("mask", mask, "BOOL")]).as_numpy("out")
    np.testing.assert_array_equal(got, np.where(mask, values, 0))

    fixed = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(client.infer("fixed", [infer_input("x", fixed, "FP32")]).as_numpy("y"), 2 * fixed)


def test_requested_outputs_subset(client: triton.InferenceServerClient) -> None:
    a = np.array([[5.0, 1.0]], dtype=np.float32)
    b = np.array([[2.0, 3.0]], dtype=np.float32)
    inputs = [infer_input("a", a, "FP32"), infer_input("b", b, "FP32")]
    result = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("diff")])
    assert [o.name for o in result.get_response().outputs] == ["diff"]
    np.testing.assert_array_equal(result.as_numpy("diff"), a - b)
    assert result.as_numpy("sum") is None
    wanted = [triton.InferRequestedOutput("diff"), triton.InferRequestedOutput("sum")]
    both = client.infer("two", inputs, outputs=wanted)
    assert [o.name for o in both.get_response().outputs] == ["diff", "sum"]
    everything = client.infer("two", inputs)
    assert [o.name for o in everything.get_response().outputs] == ["sum", "diff"]
    classified = client.infer("two", inputs, outputs=[triton.InferRequestedOutput("sum", class_count=1)])
    assert classified.as_numpy("sum").tolist() == [[b"7.000000:0"]]  # Triton's classification extension


def test_stream_infer_matches_responses_by_id(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        sent = {}
        for i in range(8):
            a = np.full((1, 4), i, dtype=np.float32)
            sent[f"s{i}"] = a + 1
            client.async_stream_infer("add", [infer_input("a", a, "FP32"), infer_input("b", np.ones_like(a), "FP32")],
                                      request_id=f"s{i}")
        bad = np.zeros((1, 5), dtype=np.float32)
        client.async_stream_infer("add", [infer_input("a", bad, "FP32"), infer_input("b", bad, "FP32")],
                                  request_id="bad")
        results, errors = {}, []
        for _ in range(9):
            result, error = answers.get(timeout=10)
            if error is not None:
                errors.append(error)
            else:
                results[result.get_response().id] = result.as_numpy("sum")
    finally:
        client.stop_stream()
    assert set(results) == set(sent)
    for request_id, expected in sent.items():
        np.testing.assert_array_equal(results[request_id], expected)
    assert len(errors) == 1 and "shape [1, 5]" in str(errors[0])


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("batched").config
    assert (config.name, config.platform, config.max_batch_size) == ("batched", "onnxruntime_onnx", 8)
    assert [(i.name, list(i.dims)) for i in config.input] == [("a", [4]), ("b", [4])]  # no batch axis
    assert [(o.name, list(o.dims)) for o in config.output] == [("sum", [4])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000000
    assert [g.count for g in config.instance_group] == [2]
    assert config.parameters["execution_providers"].string_value == "CPUExecutionProvider"

    default = client.get_model_config("add").config
    assert default.max_batch_size == 64 and default.input[0].data_type == triton.model_config_pb2.TYPE_FP32
    fixed = client.get_model_config("fixed").config
    assert fixed.max_batch_size == 0 and [list(i.dims) for i in fixed.input] == [[2, 2]]
    assert client.get_model_config("strings").config.input[0].data_type == triton.model_config_pb2.TYPE_STRING
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_config("no_such_model")
    assert grpc_code(excinfo) == "NOT_FOUND"


def test_dynamic_batching_combines_concurrent_requests(client: triton.InferenceServerClient) -> None:
    """Four single-sample requests reach the preferred batch size 4 well within the 1 s queue delay."""
    results: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        a = np.full((1, 4), i, dtype=np.float32)
        results[i] = client.infer("batched", [infer_input("a", a, "FP32"), infer_input("b", a, "FP32")]
                                  ).as_numpy("sum")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 5
    for i in range(4):
        np.testing.assert_array_equal(results[i], np.full((1, 4), 2 * i, dtype=np.float32))
    stats = client.get_inference_statistics("batched", as_json=False).model_stats[0]
    assert stats.inference_count == 4 and stats.execution_count == 1
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(4, 1)]


def test_model_statistics_counts_exactly(client: triton.InferenceServerClient) -> None:
    good, bad = 5, 3
    a = np.ones((2, 4), dtype=np.float32)
    for _ in range(good):
        client.infer("stats", [infer_input("a", a, "FP32"), infer_input("b", a, "FP32")])
    wrong = np.ones((2, 5), dtype=np.float32)
    for _ in range(bad):
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer("stats", [infer_input("a", wrong, "FP32"), infer_input("b", wrong, "FP32")])
        assert grpc_code(excinfo) == "INVALID_ARGUMENT"
    response = client.get_inference_statistics("stats", as_json=False)
    assert len(response.model_stats) == 1
    stats = response.model_stats[0]
    assert (stats.name, stats.version) == ("stats", "1")
    s = stats.inference_stats
    assert (s.success.count, s.fail.count) == (good, bad)
    assert s.success.ns > 0 and s.fail.ns > 0
    for duration in (s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert duration.count == good
    assert s.queue.ns > 0 and s.compute_infer.ns > 0
    assert (stats.inference_count, stats.execution_count) == (2 * good, good)
    assert stats.last_inference > 0
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(2, good)]
    assert all(b.compute_infer.ns > 0 for b in stats.batch_stats)

    everything = client.get_inference_statistics(as_json=False)
    assert {"add", "stats", "conv"} <= {m.name for m in everything.model_stats}
    assert "corrupt" not in {m.name for m in everything.model_stats}
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_inference_statistics("no_such_model")
    assert grpc_code(excinfo) == "NOT_FOUND"


# ------------------------------------------------------------------------------------------ repository

def test_repository_index_reports_states_and_reasons(client: triton.InferenceServerClient) -> None:
    index = {(m.name, m.version): m for m in client.get_model_repository_index(as_json=False).models}
    assert index[("add", "1")].state == "READY"
    corrupt = index[("corrupt", "1")]
    assert corrupt.state == "UNAVAILABLE" and "model.onnx" in corrupt.reason
    bad = [m for (name, _), m in index.items() if name == "badconfig"]
    assert len(bad) == 1 and bad[0].state == "UNAVAILABLE"
    assert "config.yaml" in bad[0].reason and "bogus_knob" in bad[0].reason
    ready_only = client.get_model_repository_index(as_json=False)
    assert ready_only.models  # tritonclient asks for every model; a ready-only request filters:
    for code in ("corrupt", "badconfig"):
        with pytest.raises(InferenceServerException) as excinfo:
            client.infer(code, [infer_input("a", np.ones((1, 4), np.float32), "FP32")])
        assert grpc_code(excinfo) == "UNAVAILABLE"


def test_repository_index_ready_filter(v2_stub_for: Callable, server: InProcessServer) -> None:
    response = v2_stub_for(server.url).RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10)
    assert response.models and all(m.state == "READY" for m in response.models)
    assert "corrupt" not in {m.name for m in response.models}


def test_unload_and_load(client: triton.InferenceServerClient) -> None:
    a = np.ones((1, 4), dtype=np.float32)
    inputs = [infer_input("a", a, "FP32"), infer_input("b", a, "FP32")]
    client.infer("unloadable", inputs)
    client.unload_model("unloadable")
    assert client.is_model_ready("unloadable") is False
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("unloadable", inputs)
    assert grpc_code(excinfo) == "UNAVAILABLE"  # DESIGN §6: unloaded -> UNAVAILABLE
    index = {m.name: m for m in client.get_model_repository_index(as_json=False).models}
    assert index["unloadable"].state == "UNAVAILABLE"
    client.load_model("unloadable")
    assert client.is_model_ready("unloadable")
    np.testing.assert_array_equal(client.infer("unloadable", inputs).as_numpy("sum"), 2 * a)

    with pytest.raises(InferenceServerException) as excinfo:  # config overrides are refused, not ignored
        client.load_model("unloadable", config='{"max_batch_size": 2}')
    assert grpc_code(excinfo) == "INVALID_ARGUMENT" and "config" in str(excinfo.value)
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("no_such_model")
    assert grpc_code(excinfo) == "NOT_FOUND"
    with pytest.raises(InferenceServerException) as excinfo:
        client.unload_model("no_such_model")
    assert grpc_code(excinfo) == "NOT_FOUND"
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("corrupt")  # still corrupt: the load fails with its reason, the others keep serving
    assert "model.onnx" in str(excinfo.value)
    assert client.is_model_ready("add")


@pytest.mark.parametrize(("model", "served", "default"), [
    ("versions_latest", [3], 3), ("versions_all", [1, 2, 3], 3), ("versions_specific", [1, 3], 3)])
def test_version_policies(client: triton.InferenceServerClient, model: str, served: list[int], default: int) -> None:
    assert [int(v) for v in client.get_model_metadata(model).versions] == served
    x = np.array([[1.0, -2.0]], dtype=np.float32)
    result = client.infer(model, [infer_input("x", x, "FP32")])
    assert result.get_response().model_version == str(default)
    np.testing.assert_array_equal(result.as_numpy("y"), x * default)
    for version in (1, 2, 3):
        if version in served:
            assert client.is_model_ready(model, str(version))
            got = client.infer(model, [infer_input("x", x, "FP32")], model_version=str(version)).as_numpy("y")
            np.testing.assert_array_equal(got, x * version)
        else:
            assert client.is_model_ready(model, str(version)) is False
            with pytest.raises(InferenceServerException) as excinfo:
                client.infer(model, [infer_input("x", x, "FP32")], model_version=str(version))
            assert grpc_code(excinfo) == "NOT_FOUND"


# ------------------------------------------------------------------------------------------ acceptance

@pytest.mark.parametrize("classifier", ["conv", pytest.param("mnist-cnn", marks=pytest.mark.skipif(
    not (MNIST / "1" / "model.onnx").is_file(), reason="models/mnist-cnn not present"))])
def test_acceptance_image_classifier_matches_onnxruntime(tmp_path: Path, classifier: str) -> None:
    """`onnx-serve --model-repository <dir with an image classifier>` + tritonclient == in-process ORT."""
    if classifier == "conv":
        model_path = conv_classifier_model(tmp_path / "classifier" / "1" / "model.onnx", classes=10, size=28)
    else:
        model_path = tmp_path / "classifier" / "1" / "model.onnx"
        model_path.parent.mkdir(parents=True)
        model_path.write_bytes((MNIST / "1" / "model.onnx").read_bytes())
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [4 if not isinstance(d, int) or d < 0 else d for d in spec.shape]
    images = np.random.default_rng(3).random(shape, dtype=np.float32)
    expected = session.run(None, {spec.name: images})[0]
    with (in_process_server(tmp_path, execution_providers=("CPUExecutionProvider",)) as running,
          triton.InferenceServerClient(running.url) as c):
        assert c.is_server_ready() and c.is_model_ready("classifier")
        output = session.get_outputs()[0].name
        got = c.infer("classifier", [infer_input(spec.name, images, "FP32")]).as_numpy(output)
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= 1e-5
