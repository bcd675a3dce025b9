"""The KServe V2 REST API with Triton's extensions, driven by tritonclient.http (sync and aio) against the real
in-process server: health, metadata, config, statistics, repository load/unload, and inference with binary
tensor data and with JSON, in every datatype, answers checked against in-process ONNX Runtime."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from onnx import TensorProto
from onnx_serve import __version__
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import InProcessServer, server_fixture
from tests.helpers.metrics import value
from tests.helpers.serving import BUNDLED_MODELS, add_model, identity_model, string_model

NUMERIC = {
    "BOOL": (TensorProto.BOOL, np.bool_), "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16), "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64), "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16), "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64), "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32), "FP64": (TensorProto.DOUBLE, np.float64),
}
MNIST = BUNDLED_MODELS / "mnist-cnn" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "mnist-cnn").symlink_to(BUNDLED_MODELS / "mnist-cnn", target_is_directory=True)
    add_model(root / "add" / "1" / "model.onnx")
    string_model(root / "strings" / "1" / "model.onnx")
    for name, (elem_type, _) in NUMERIC.items():
        identity_model(root / f"id_{name.lower()}" / "1" / "model.onnx", elem_type)
    return root


server = server_fixture()


@pytest.fixture(scope="module")
def client(server: InProcessServer) -> Iterator[httpclient.InferenceServerClient]:
    made = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=10)
    yield made
    made.close()


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(len(datatype))
    dtype = NUMERIC[datatype][1]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def tensor_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    item = httpclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-cnn") and client.is_model_ready("mnist-cnn", "1")
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready("mnist-cnn", "7")
    metadata = client.get_server_metadata()
    assert (metadata["name"], metadata["version"]) == ("onnx-serve", __version__)
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        metadata["extensions"])


def test_model_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("mnist-cnn")
    assert metadata == {"name": "mnist-cnn", "versions": ["1"], "platform": "onnxruntime_onnx",
                        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
                        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]}
    assert client.get_model_metadata("mnist-cnn", "1") == metadata
    config = client.get_model_config("mnist-cnn")
    assert (config["name"], config["platform"], config["max_batch_size"]) == ("mnist-cnn", "onnxruntime_onnx", 64)
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [1, 28, 28],
                                "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False,
                                "is_non_linear_format_io": False}]  # defaults printed, as Triton does
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_metadata("no_such_model")
    assert excinfo.value.status() == "404"
    assert "Request for unknown model: 'no_such_model' is not found" in excinfo.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_mnist_answers_equal_onnxruntime(client: httpclient.InferenceServerClient, binary: bool) -> None:
    images = np.random.default_rng(3).random((3, 1, 28, 28), dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("mnist-cnn", [tensor_input("input", images, "FP32", binary)], outputs=outputs,
                          request_id="mnist-1")
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("mnist-cnn", "1", "mnist-1")
    assert ("data" in response["outputs"][0]) is not binary
    np.testing.assert_allclose(result.as_numpy("probabilities"), ort_run(MNIST, {"input": images}), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_every_datatype_round_trips(client: httpclient.InferenceServerClient, repository: Path, datatype: str,
                                    binary: bool) -> None:
    model = "strings" if datatype == "BYTES" else f"id_{datatype.lower()}"
    if datatype == "BYTES":
        x = np.array([b"hello", b"", "gr\u00fc\u00df".encode()], dtype=np.object_)
    else:
        x = sample(datatype, (2, 3))
    # No requested outputs: tritonclient then asks for every output as binary data (binary_data_output).
    outputs = None if binary else [httpclient.InferRequestedOutput("y", binary_data=False)]
    result = client.infer(model, [tensor_input("x", x, datatype, binary)], outputs=outputs)
    got = result.as_numpy("y")
    if datatype == "BYTES":  # tritonclient gives JSON strings back as str, binary ones as bytes
        assert [v.encode() if isinstance(v, str) else bytes(v) for v in got] == list(x)
    else:
        expected = ort_run(repository / model / "1" / "model.onnx", {"x": x})
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_two_inputs_binary_and_json_mixed(client: httpclient.InferenceServerClient) -> None:
    a, b = np.ones((2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("add", [tensor_input("a", a, "FP32", True), tensor_input("b", b, "FP32", False)])
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)


def test_statistics_count_http_inferences(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("add")["model_stats"][0]["inference_count"]
    client.infer("add", [tensor_input(n, np.zeros((3, 4), np.float32), "FP32", True) for n in "ab"])
    stats = client.get_inference_statistics("add", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("add", "1")]
    assert stats[0]["inference_count"] == before + 3
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    assert {s["name"] for s in client.get_inference_statistics()["model_stats"]} >= {"add", "mnist-cnn"}


def test_repository_index_load_and_unload(client: httpclient.InferenceServerClient) -> None:
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["add"] == {"name": "add", "version": "1", "state": "READY"}
    client.unload_model("add")
    assert not client.is_model_ready("add")
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("add", [tensor_input(n, np.zeros((1, 4), np.float32), "FP32", True) for n in "ab"])
    assert excinfo.value.status() in ("404", "503")
    client.load_model("add")
    assert client.is_model_ready("add")
    with pytest.raises(InferenceServerException) as excinfo:
        client.load_model("add", config='{"max_batch_size": 2}')  # overrides are refused, not ignored
    assert excinfo.value.status() == "400" and "not supported" in excinfo.value.message()


def test_errors_carry_the_data_planes_message(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("add", [tensor_input("a", np.zeros((1, 4), np.float32), "FP32", True)])
    assert (excinfo.value.status(), excinfo.value.message()) == ("400", "missing input b")
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("add", [tensor_input(n, np.zeros((1, 4), np.int32), "INT32", True) for n in "ab"])
    assert excinfo.value.status() == "400" and "does not match the model's FP32" in excinfo.value.message()


def test_the_aio_client(server: InProcessServer) -> None:
    async def calls() -> None:
        client = aioclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("mnist-cnn")
            assert (await client.get_model_metadata("mnist-cnn"))["platform"] == "onnxruntime_onnx"
            assert (await client.get_model_config("mnist-cnn"))["max_batch_size"] == 64
            images = np.random.default_rng(4).random((2, 1, 28, 28), dtype=np.float32)
            for binary in (True, False):
                item = aioclient.InferInput("input", list(images.shape), "FP32")
                item.set_data_from_numpy(images, binary_data=binary)
                outputs = [aioclient.InferRequestedOutput("probabilities", binary_data=binary)]
                result = await client.infer("mnist-cnn", [item], outputs=outputs)
                np.testing.assert_allclose(result.as_numpy("probabilities"), ort_run(MNIST, {"input": images}),
                                           rtol=1e-5, atol=1e-6)
            assert (await client.get_inference_statistics("mnist-cnn"))["model_stats"][0]["inference_count"] >= 2
            assert any(m["name"] == "strings" for m in await client.get_model_repository_index())
            await client.unload_model("strings")
            assert not await client.is_model_ready("strings")
            await client.load_model("strings")
            assert await client.is_model_ready("strings")
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(calls(), 30))


def test_request_id_header_is_echoed_and_used(server: InProcessServer) -> None:
    body = json.dumps({"inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                                  for n in "ab"]})
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        connection.request("POST", "/v2/models/add/infer", body, {"X-Request-ID": "trace-42"})
        response = connection.getresponse()
        document = json.loads(response.read())
        assert response.status == 200 and response.getheader("X-Request-ID") == "trace-42"
        assert document["id"] == "trace-42" and document["outputs"][0]["data"] == [2, 4, 6, 8]
        connection.request("GET", "/v2/health/live", headers={"X-Request-ID": "probe-1"})
        response = connection.getresponse()
        assert json.loads(response.read()) == {"live": True} and response.getheader("X-Request-ID") == "probe-1"
    finally:
        connection.close()


def test_metrics_tell_http_calls_apart(server: InProcessServer, client: httpclient.InferenceServerClient) -> None:
    images = np.zeros((1, 1, 28, 28), np.float32)
    client.infer("mnist-cnn", [tensor_input("input", images, "FP32", True)])
    text = server.scrape()
    assert value(text, "onnx_serve_requests_total", model="mnist-cnn", api="http_infer", code="OK") >= 1
