"""A Triton model repository served as it is, driven with tritonclient.http the way Triton's own HTTP example
clients (src/python/examples in triton-inference-server/client) drive it: simple_http_infer_client,
simple_http_string_infer_client, simple_http_health_metadata, simple_http_async_infer_client,
simple_http_aio_infer_client and image_client.py -i http, each of their calls made here in our own code and
answers checked against in-process ONNX Runtime; the model configuration JSON as Triton prints it; the
classification extension; priorities and each queue policy action over HTTP; the model control modes and
--strict-readiness seen from both edges."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import InProcessServer, in_process_server, server_fixture
from tests.helpers.triton_examples import CLASSES, triton_repository
from tests.helpers.triton_scheduling import SHORT_TIMEOUT_US, busy, instant, scheduling_repository

UNKNOWN = "Request for unknown model"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scheduling_repository(triton_repository(tmp_path_factory.mktemp("triton")))


server = server_fixture()


@pytest.fixture(scope="module")
def client(server: InProcessServer) -> Iterator[httpclient.InferenceServerClient]:
    made = httpclient.InferenceServerClient(address(server), network_timeout=10, concurrency=4)
    yield made
    made.close()


def address(server: InProcessServer) -> str:
    return server.http_url.removeprefix("http://")


def ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def add_sub_inputs(first: np.ndarray, second: np.ndarray, datatype: str, binary: tuple[bool, bool] = (False, True)
                   ) -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput("INPUT0", list(first.shape), datatype),
              httpclient.InferInput("INPUT1", list(second.shape), datatype)]
    inputs[0].set_data_from_numpy(first, binary_data=binary[0])
    inputs[1].set_data_from_numpy(second, binary_data=binary[1])
    return inputs


def simple_data() -> tuple[np.ndarray, np.ndarray]:
    """simple_http_infer_client's data: INPUT0 = 0..15, INPUT1 = -1s, one batch item."""
    return np.arange(16, dtype=np.int32)[np.newaxis], np.full((1, 16), -1, dtype=np.int32)


# ------------------------------------------------------------------------------ health and metadata


def test_health_metadata_calls(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert client.is_server_ready() and client.is_model_ready("simple")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "onnx-serve"  # the one check of Triton's client that differs: it wants "triton"
    assert "classification" in metadata["extensions"]
    model = client.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})
    assert model["name"] == "simple" and model["versions"] == ["1"]
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_metadata("wrong_model_name")
    assert UNKNOWN in excinfo.value.message()
    assert client.get_model_config("simple")["name"] == "simple"


def test_model_config_json_prints_defaults_as_triton(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("densenet_onnx")
    assert config["max_batch_size"] == 0  # image_client.py reads it without checking it is there
    [data] = config["input"]
    assert data == {"name": "data_0", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 224, 224],
                    "reshape": {"shape": [1, 3, 224, 224]}, "is_shape_tensor": False, "allow_ragged_batch": False,
                    "optional": False, "is_non_linear_format_io": False}
    [scores] = config["output"]
    assert (scores["dims"], scores["label_filename"], scores["is_shape_tensor"]) == ([1000], "densenet_labels.txt",
                                                                                     False)
    assert config["batch_input"] == [] and config["model_warmup"] == [] and config["cc_model_filenames"] == {}
    assert config["version_policy"] == {"latest": {"num_versions": 1}}  # a oneof: only the member set
    assert "dynamic_batching" not in config and "sequence_batching" not in config  # unset messages left out
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["passive"] is False
    simple = client.get_model_config("simple")
    assert simple["max_batch_size"] == 8 and simple["input"][0]["format"] == "FORMAT_NONE"


# ------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_simple_infer_as_the_infer_client(client: httpclient.InferenceServerClient, repository: Path,
                                          compression: str | None) -> None:
    first, second = simple_data()
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = client.infer("simple", add_sub_inputs(first, second, "INT32"), outputs=outputs,
                          query_params={"test_1": 1, "test_2": 2}, headers={"test": "1"},
                          request_compression_algorithm=compression, response_compression_algorithm=compression)
    expected = ort_outputs(repository / "simple" / "1" / "model.onnx", {"INPUT0": first, "INPUT1": second})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])
    assert len(client.get_inference_statistics(model_name="simple")["model_stats"]) == 1
    everything = client.infer("simple", add_sub_inputs(first, second, "INT32"), outputs=None)  # all outputs
    np.testing.assert_array_equal(everything.as_numpy("OUTPUT1"), first - second)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("wrong_model_name", add_sub_inputs(first, second, "INT32"), outputs=outputs)
    assert excinfo.value.message().startswith(UNKNOWN)


def test_simple_string_and_identity_as_the_string_client(client: httpclient.InferenceServerClient) -> None:
    digits = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    ones = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = client.infer("simple_string", add_sub_inputs(digits, ones, "BYTES", (True, False)), outputs=outputs)
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == [i + 1 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == [i - 1 for i in range(16)]
    for data, binary in ((digits, True), (digits, False), (np.array([b"\x00\x01\x02"] * 16, np.bytes_).reshape(1, 16),
                                                            True)):
        given = httpclient.InferInput("INPUT0", list(data.shape), "BYTES")
        given.set_data_from_numpy(data, binary_data=binary)
        echoed = client.infer("simple_identity", [given],
                              outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
        answer = echoed.as_numpy("OUTPUT0")
        if not binary:  # JSON answers text, which the client hands back as str
            answer = np.array([str(x).encode() for x in answer.ravel()], dtype=np.object_).reshape(1, 16)
        assert answer.tolist() == data.astype(np.object_).tolist()


def test_async_infer_and_the_aio_client(client: httpclient.InferenceServerClient, server: InProcessServer) -> None:
    first, second = simple_data()
    pending = [client.async_infer("simple", add_sub_inputs(first, second, "INT32"), request_id=str(i))
               for i in range(3)]
    for request in pending:
        np.testing.assert_array_equal(request.get_result().as_numpy("OUTPUT0"), first + second)

    async def run() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(address(server)) as aio:
            assert await aio.is_server_live() and await aio.is_model_ready("simple")
            assert (await aio.get_model_metadata("simple"))["name"] == "simple"
            results = await asyncio.gather(*(aio.infer("simple", add_sub_inputs(first, second, "INT32"))
                                             for _ in range(2)))
            with pytest.raises(InferenceServerException, match=UNKNOWN):
                await aio.infer("wrong_model_name", add_sub_inputs(first, second, "INT32"))
            return [r.as_numpy("OUTPUT1") for r in results]

    for output in asyncio.run(run()):
        np.testing.assert_array_equal(output, first - second)


# ------------------------------------------------------------------- classification, image_client


def test_classification_per_batch_item(client: httpclient.InferenceServerClient) -> None:
    first = np.array([[3, 9, 1] + [0] * 13, [5, 2, 8] + [0] * 13], dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2) for binary in (True,)]
    result = client.infer("simple", add_sub_inputs(first, np.zeros_like(first), "INT32"), outputs=outputs)
    assert result.as_numpy("OUTPUT0").tolist() == [[b"9:1", b"3:0"], [b"8:2", b"5:0"]]
    as_json = client.infer("simple", add_sub_inputs(first, np.zeros_like(first), "INT32"),
                           outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=1)])
    assert as_json.get_response()["outputs"][0] == {"name": "OUTPUT0", "datatype": "BYTES", "shape": [2, 1],
                                                    "data": ["9:1", "8:2"]}


def test_image_client_gets_the_top_classes_of_onnx_runtime(client: httpclient.InferenceServerClient,
                                                           repository: Path) -> None:
    """image_client.py -i http -m densenet_onnx -c 3 -s INCEPTION, its calls in our own code."""
    metadata, config = client.get_model_metadata("densenet_onnx"), client.get_model_config("densenet_onnx")
    assert len(metadata["inputs"]) == len(metadata["outputs"]) == len(config["input"]) == 1
    assert metadata["outputs"][0]["datatype"] == "FP32"
    batched = config["max_batch_size"] > 0
    assert not batched and len(metadata["inputs"][0]["shape"]) == 3
    assert dict(mc.ModelInput.Format.items())[config["input"][0]["format"]] == mc.ModelInput.FORMAT_NCHW
    _, h, w = metadata["inputs"][0]["shape"]
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype(np.uint8)).save(buffer, "PNG")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").resize((w, h), Image.BILINEAR)
    data = np.transpose(np.asarray(image).astype(np.float32) / 127.5 - 1, (2, 0, 1))
    scores = ort_outputs(repository / "densenet_onnx" / "1" / "model.onnx", {"data_0": data[np.newaxis]})["fc6_1"]
    flat = scores.ravel()
    expected = [f"{float(flat[i]):f}:{i}:CLASS_{i}" for i in np.argsort(-flat, kind="stable")[:3]]
    given = httpclient.InferInput(metadata["inputs"][0]["name"], list(data.shape), "FP32")
    given.set_data_from_numpy(data)
    asked = [httpclient.InferRequestedOutput(metadata["outputs"][0]["name"], class_count=3)]
    results = [client.infer("densenet_onnx", [given], outputs=asked),
               client.async_infer("densenet_onnx", [given], outputs=asked).get_result()]
    for result in results:
        classes = result.as_numpy("fc6_1")
        assert classes.shape == (3,)
        assert ["".join(chr(x) for x in item) for item in classes] == expected  # how image_client reads them
    plain = client.infer("densenet_onnx", [given]).as_numpy("fc6_1")
    assert plain.shape == (CLASSES,)
    np.testing.assert_allclose(plain, flat, rtol=1e-6)


# --------------------------------------------------------------------- priorities and queue policies


def spin_input(data: np.ndarray) -> list[httpclient.InferInput]:
    given = httpclient.InferInput("x", list(data.shape), "FP32")
    given.set_data_from_numpy(data)
    return [given]


def two_at_once(server: InProcessServer, model: str, **options: Any) -> list[Any]:
    """Two requests that each keep the model's one instance busy, sent together: one waits in the queue."""
    async def run() -> list[Any]:
        async with aioclient.InferenceServerClient(address(server)) as aio:
            return await asyncio.gather(*(aio.infer(model, spin_input(busy()), **options) for _ in range(2)),
                                        return_exceptions=True)

    return asyncio.run(run())


def rejected(outcomes: list[Any]) -> list[InferenceServerException]:
    return [o for o in outcomes if isinstance(o, InferenceServerException)]


def test_reject_answers_a_queued_request_503_as_triton(server: InProcessServer) -> None:
    outcomes = two_at_once(server, "reject")
    [refused] = rejected(outcomes)
    assert refused.status() == "503" and refused.message().startswith("Request timeout expired")
    assert sum(1 for o in outcomes if isinstance(o, aioclient.InferResult)) == 1


def test_a_request_timeout_overrides_the_default_where_allowed(server: InProcessServer) -> None:
    [refused] = rejected(two_at_once(server, "override", timeout=SHORT_TIMEOUT_US))
    assert refused.status() == "503" and "Request timeout expired" in refused.message()


def test_priority_is_accepted_and_checked(client: httpclient.InferenceServerClient, server: InProcessServer) -> None:
    for priority in (1, 2, 7):  # 7: above priority_levels, so the default level, as Triton
        client.infer("prioritised", spin_input(instant()), priority=priority)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0, 0]}],
            "parameters": {"priority": -1}}  # tritonclient will not send that
    request = urllib.request.Request(f"{server.http_url}/v2/models/prioritised/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=10)
    assert excinfo.value.code == 400
    assert "parameters.priority: expected a non-negative integer" in json.load(excinfo.value)["error"]


def test_extensions_over_raw_http(server: InProcessServer) -> None:
    with urllib.request.urlopen(f"{server.http_url}/v2", timeout=10) as response:
        assert "schedule_policy" in json.load(response)["extensions"]


# ----------------------------------------------------------------------- model control, readiness


def test_poll_mode_refuses_load_requests_on_both_edges_and_loose_readiness(tmp_path: Path) -> None:
    root = triton_repository(tmp_path)
    (root / "simple_int8" / "1" / "model.onnx").write_bytes(b"not onnx")
    settings = {"execution_providers": ("CPUExecutionProvider",), "model_control_mode": "poll",
                "repository_poll_s": 0.0, "strict_readiness": False}
    with in_process_server(root, **settings) as running, \
            httpclient.InferenceServerClient(address(running)) as rest, grpcclient.InferenceServerClient(running.url) \
            as rpc:
        assert rest.is_server_ready() and rpc.is_server_ready()  # --strict-readiness=false: a broken model is fine
        assert not rest.is_model_ready("simple_int8") and rest.is_model_ready("simple")
        for call in (lambda: rest.load_model("simple"), lambda: rest.unload_model("simple"),
                     lambda: rpc.load_model("simple")):
            with pytest.raises(InferenceServerException) as excinfo:
                call()
            assert excinfo.value.status() in ("503", "StatusCode.UNAVAILABLE")
            assert excinfo.value.message().startswith("explicit model load / unload is not allowed")
        assert rest.is_model_ready("simple")


def test_explicit_mode_loads_what_it_is_told(tmp_path: Path) -> None:
    settings = {"execution_providers": ("CPUExecutionProvider",), "model_control_mode": "explicit",
                "load_model": ("simple",)}
    with in_process_server(triton_repository(tmp_path), **settings) as running, \
            httpclient.InferenceServerClient(address(running)) as rest:
        index = {entry["name"]: entry for entry in rest.get_model_repository_index()}
        assert index["simple"]["state"] == "READY"
        assert (index["densenet_onnx"]["state"], index["densenet_onnx"]["reason"]) == ("UNAVAILABLE", "unloaded")
        assert rest.is_server_ready()
        rest.load_model("densenet_onnx")
        assert rest.is_model_ready("densenet_onnx")
        rest.unload_model("simple")
        assert not rest.is_model_ready("simple") and rest.is_server_ready()
