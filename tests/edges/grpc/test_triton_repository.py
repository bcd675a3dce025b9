"""A Triton model repository served as it is (config.pbtxt files), driven with tritonclient.grpc the way
Triton's own Python example clients (src/python/examples in triton-inference-server/client) drive it: the
simple_* infer, string, health-metadata, custom-args, keepalive, async and aio clients, the grpc_explicit_*
content clients, grpc_client.py and image_client.py, each of their calls made here in our own code and answers
checked against in-process ONNX Runtime. Also ModelConfig field by field, the classification extension, a
priority request overtaking the queue, and each queue policy action."""

from __future__ import annotations

import asyncio
import io
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.grpc.model_config_pb2 as mc
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, connection_fixture, in_process_server, server_fixture
from tests.helpers.serving import add_model
from tests.helpers.triton_examples import CLASSES, triton_repository
from tests.helpers.triton_scheduling import SHORT_TIMEOUT_US, busy, instant, scheduling_repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scheduling_repository(triton_repository(tmp_path_factory.mktemp("triton")))


server = server_fixture()
client = connection_fixture(triton.InferenceServerClient)


def ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def add_sub_inputs(dtype: type[np.generic], datatype: str) -> tuple[list[triton.InferInput], np.ndarray, np.ndarray]:
    """Triton's simple clients' data: INPUT0 = 0..15, INPUT1 = ones, one batch item."""
    first = np.arange(16, dtype=dtype)[np.newaxis]
    second = np.ones((1, 16), dtype=dtype)
    inputs = [triton.InferInput("INPUT0", [1, 16], datatype), triton.InferInput("INPUT1", [1, 16], datatype)]
    inputs[0].set_data_from_numpy(first)
    inputs[1].set_data_from_numpy(second)
    return inputs, first, second


def requested(*names: str, class_count: int = 0) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, class_count=class_count) for name in names]


def check_add_sub(result: triton.InferResult, first: np.ndarray, second: np.ndarray, model: Path) -> None:
    expected = ort_outputs(model, {"INPUT0": first, "INPUT1": second})
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)  # what the clients check


# ------------------------------------------------------------------------------ health and metadata


def test_every_example_model_is_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live(headers={"test": "1", "dummy": "2"})
    assert client.is_server_ready()
    for name in ("simple", "simple_int8", "simple_string", "simple_identity", "densenet_onnx"):
        assert client.is_model_ready(name), name
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert set(index.values()) == {"READY"}


def test_health_metadata_calls(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert "classification" in metadata.extensions
    model = client.get_model_metadata("simple", headers={"test": "1", "dummy": "2"})
    assert (model.name, model.platform, list(model.versions)) == ("simple", "onnxruntime_onnx", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("INPUT0", "INT32", [-1, 16]),
                                                                           ("INPUT1", "INT32", [-1, 16])]
    with pytest.raises(InferenceServerException) as excinfo:
        client.get_model_metadata("wrong_model_name")
    assert excinfo.value.message().startswith("Request for unknown model: 'wrong_model_name'")
    assert client.get_model_config("simple").config.name == "simple"


# ------------------------------------------------------------------------------------ ModelConfig


def test_model_config_of_simple_field_by_field(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("simple").config
    assert (config.name, config.platform, config.backend) == ("simple", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 8 and config.default_model_filename == "model.onnx"
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    for tensors in (config.input, config.output):
        for tensor in tensors:
            assert (tensor.data_type, list(tensor.dims), tensor.HasField("reshape")) == (mc.TYPE_INT32, [16], False)
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert config.input[0].format == mc.ModelInput.FORMAT_NONE
    assert not config.HasField("dynamic_batching")  # declared inputs and outputs: no auto-complete, as Triton
    [group] = config.instance_group
    assert (group.name, group.kind, group.count) == ("simple", mc.ModelInstanceGroup.KIND_CPU, 2)
    assert not config.model_warmup
    assert config.parameters["execution_providers"].string_value == "CPUExecutionProvider"


def test_model_config_of_densenet_field_by_field(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("densenet_onnx").config
    assert config.max_batch_size == 0
    [data] = config.input
    assert (data.name, data.data_type, data.format) == ("data_0", mc.TYPE_FP32, mc.ModelInput.FORMAT_NCHW)
    assert (list(data.dims), list(data.reshape.shape)) == ([3, 224, 224], [1, 3, 224, 224])
    [scores] = config.output
    assert (scores.name, list(scores.dims), list(scores.reshape.shape)) == ("fc6_1", [1000], [1, 1000, 1, 1])
    assert scores.label_filename == "densenet_labels.txt"
    assert config.input[0].HasField("reshape") and not config.HasField("dynamic_batching")
    string = client.get_model_config("simple_string").config
    assert [i.data_type for i in string.input] == [mc.TYPE_STRING] * 2


def test_model_config_of_an_auto_completed_model(tmp_path: Path) -> None:
    root = triton_repository(tmp_path)
    (root / "simple" / "config.pbtxt").write_text('name: "simple"\nplatform: "onnxruntime_onnx"\n'
                                                   'model_warmup [ { name: "ones" batch_size: 2 inputs [ '
                                                   '{ key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] '
                                                   'random_data: true } }, { key: "INPUT1" value: { data_type: '
                                                   'TYPE_INT32 dims: [ 16 ] zero_data: true } } ] } ]\n')
    with in_process_server(root, execution_providers=("CPUExecutionProvider",)) as running, \
            triton.InferenceServerClient(running.url) as completed:
        config = completed.get_model_config("simple").config
        assert config.max_batch_size == 4  # Triton's default for a graph that can batch
        assert list(config.dynamic_batching.preferred_batch_size) == [4]
        assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
        assert [(t.name, list(t.dims)) for t in config.output] == [("OUTPUT0", [16]), ("OUTPUT1", [16])]
        [sample] = config.model_warmup
        assert (sample.name, sample.batch_size) == ("ones", 2)
        assert sample.inputs["INPUT0"].WhichOneof("input_data_type") == "random_data"
        assert list(sample.inputs["INPUT1"].dims) == [16]
        assert "max_batch_size set to 4" in running.log()


# ------------------------------------------------------------------------------------- inference


def test_simple_infer_as_the_infer_client(client: triton.InferenceServerClient, repository: Path) -> None:
    inputs, first, second = add_sub_inputs(np.int32, "INT32")
    result = client.infer("simple", inputs, outputs=requested("OUTPUT0", "OUTPUT1"), client_timeout=10.0,
                          headers={"test": "1"}, compression_algorithm="gzip")
    check_add_sub(result, first, second, repository / "simple" / "1" / "model.onnx")
    assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
    again = client.infer("simple", inputs, compression_algorithm="deflate")  # no outputs named: all of them
    check_add_sub(again, first, second, repository / "simple" / "1" / "model.onnx")


def test_simple_int8(client: triton.InferenceServerClient, repository: Path) -> None:
    inputs, first, second = add_sub_inputs(np.int8, "INT8")
    result = client.infer("simple_int8", inputs, outputs=requested("OUTPUT0", "OUTPUT1"))
    check_add_sub(result, first, second, repository / "simple_int8" / "1" / "model.onnx")
    assert result.as_numpy("OUTPUT1").dtype == np.int8


def test_simple_string_and_identity_as_the_string_client(client: triton.InferenceServerClient) -> None:
    digits = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    ones = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    inputs = [triton.InferInput("INPUT0", [1, 16], "BYTES"), triton.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(digits)
    inputs[1].set_data_from_numpy(ones)
    result = client.infer("simple_string", inputs, outputs=requested("OUTPUT0", "OUTPUT1"))
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == [i + 1 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == [i - 1 for i in range(16)]
    for data in (np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16),  # an embedded NUL
                 np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)):  # binary-looking bytes
        given = triton.InferInput("INPUT0", list(data.shape), "BYTES")
        given.set_data_from_numpy(data)
        echoed = client.infer("simple_identity", [given], outputs=requested("OUTPUT0")).as_numpy("OUTPUT0")
        assert echoed.tolist() == data.astype(np.object_).tolist()


def test_async_and_stream_infer(client: triton.InferenceServerClient) -> None:
    inputs, first, second = add_sub_inputs(np.int32, "INT32")
    answers: queue.Queue[tuple[triton.InferResult | None, InferenceServerException | None]] = queue.Queue()
    client.async_infer("simple", inputs, lambda result, error: answers.put((result, error)), request_id="7",
                       outputs=requested("OUTPUT0", "OUTPUT1"))
    result, error = answers.get(timeout=10)
    assert error is None and result is not None and result.get_response().id == "7"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            client.async_stream_infer("simple", inputs, request_id=f"s{i}", outputs=requested("OUTPUT0"))
        streamed = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in streamed)
    assert sorted(r.get_response().id for r, _ in streamed if r is not None) == ["s0", "s1", "s2"]


def test_aio_client_infers_concurrently(server: InProcessServer) -> None:
    async def run() -> list[np.ndarray]:
        async with triton_aio.InferenceServerClient(server.url) as aio:
            assert await aio.is_server_live() and await aio.is_model_ready("simple")
            inputs, _, _ = add_sub_inputs(np.int32, "INT32")
            results = await asyncio.gather(*(aio.infer("simple", inputs, outputs=requested("OUTPUT0"))
                                             for _ in range(2)))
            assert len((await aio.get_inference_statistics(model_name="simple")).model_stats) == 1
            return [r.as_numpy("OUTPUT0") for r in results]

    for output in asyncio.run(run()):
        assert output.tolist() == [list(range(1, 17))]


@pytest.mark.parametrize("options", [
    {"channel_args": [("grpc.keepalive_time_ms", 2**31 - 1), ("grpc.keepalive_timeout_ms", 20000),
                      ("grpc.keepalive_permit_without_calls", False), ("grpc.http2.max_pings_without_data", 2)]},
    {"keepalive_options": triton.KeepAliveOptions(keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000)},
], ids=["custom-args", "keepalive"])
def test_custom_channel_args_and_keepalive(server: InProcessServer, options: dict[str, object]) -> None:
    with triton.InferenceServerClient(server.url, **options) as custom:  # type: ignore[arg-type]
        inputs, first, second = add_sub_inputs(np.int32, "INT32")
        result = custom.infer("simple", inputs, outputs=requested("OUTPUT0", "OUTPUT1"), headers={"test": "1"})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)


# ------------------------------------------------------------------- classification, image_client


def test_classification_per_batch_item(client: triton.InferenceServerClient) -> None:
    first = np.array([[3, 9, 1] + [0] * 13, [5, 2, 8] + [0] * 13], dtype=np.int32)
    inputs = [triton.InferInput("INPUT0", [2, 16], "INT32"), triton.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(first)
    inputs[1].set_data_from_numpy(np.zeros_like(first))
    result = client.infer("simple", inputs, outputs=[*requested("OUTPUT0", class_count=2),
                                                     *requested("OUTPUT1")])
    assert result.as_numpy("OUTPUT0").tolist() == [[b"9:1", b"3:0"], [b"8:2", b"5:0"]]  # [batch, count], no labels
    response = result.get_response()
    assert [(o.name, o.datatype) for o in response.outputs] == [("OUTPUT0", "BYTES"), ("OUTPUT1", "INT32")]
    many = client.infer("simple", inputs, outputs=requested("OUTPUT0", class_count=100))
    assert many.as_numpy("OUTPUT0").shape == (2, 16)  # at most the elements there are
    with pytest.raises(InferenceServerException, match="class results are not available for a BYTES output"):
        digits = np.array([[b"1"] * 16], dtype=np.object_)
        strings = [triton.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
        for given in strings:
            given.set_data_from_numpy(digits)
        client.infer("simple_string", strings, outputs=requested("OUTPUT0", class_count=1))


def image_client_inputs(client: triton.InferenceServerClient, model: str) -> tuple[np.ndarray, str, str]:
    """What image_client.py's parse_model and preprocess make of a model and an image (our own code): one
    input of 3 dims (no batch axis when max_batch_size is 0) in NCHW or NHWC, one FP32 vector output."""
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model).config
    assert len(metadata.inputs) == len(metadata.outputs) == len(config.input) == 1
    assert metadata.outputs[0].datatype == "FP32"
    batched = config.max_batch_size > 0
    assert len(metadata.inputs[0].shape) == 3 + batched
    assert sum(1 for d in metadata.outputs[0].shape[batched:] if d > 1) == 1  # a vector
    assert config.input[0].format in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC)
    nchw = config.input[0].format == mc.ModelInput.FORMAT_NCHW
    c, h, w = metadata.inputs[0].shape[batched:] if nchw else np.roll(metadata.inputs[0].shape[batched:], 1)
    buffer = io.BytesIO()
    gradient = np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype(np.uint8)
    Image.fromarray(gradient).save(buffer, "PNG")
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB" if c == 3 else "L").resize((w, h),
                                                                                             Image.BILINEAR)
    pixels = np.asarray(image).astype(np.float32)
    pixels = (pixels / 127.5) - 1  # the client's INCEPTION scaling
    data = np.transpose(pixels, (2, 0, 1)) if nchw else pixels
    return data, metadata.inputs[0].name, metadata.outputs[0].name


def test_image_client_gets_the_top_classes_of_onnx_runtime(client: triton.InferenceServerClient,
                                                           repository: Path) -> None:
    data, input_name, output_name = image_client_inputs(client, "densenet_onnx")
    assert data.shape == (3, 224, 224)
    scores = ort_outputs(repository / "densenet_onnx" / "1" / "model.onnx", {"data_0": data[np.newaxis]})["fc6_1"]
    flat = scores.ravel()
    best = np.argsort(-flat, kind="stable")[:3]
    expected = [f"{float(flat[i]):f}:{i}:CLASS_{i}" for i in best]
    given = triton.InferInput(input_name, list(data.shape), "FP32")
    given.set_data_from_numpy(data)
    answers: queue.Queue[tuple[triton.InferResult | None, InferenceServerException | None]] = queue.Queue()
    results = [client.infer("densenet_onnx", [given], request_id="1", outputs=requested(output_name, class_count=3))]
    client.async_infer("densenet_onnx", [given], lambda result, error: answers.put((result, error)), request_id="2",
                       outputs=requested(output_name, class_count=3))
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("densenet_onnx", [given], request_id="3", outputs=requested(output_name,
                                                                                            class_count=3))
        for _ in range(2):
            result, error = answers.get(timeout=10)
            assert error is None and result is not None
            results.append(result)
    finally:
        client.stop_stream()
    for result in results:
        classes = result.as_numpy(output_name)
        assert classes.shape == (3,)  # max_batch_size 0: [count]
        assert ["".join(chr(x) for x in item) for item in classes] == expected  # how image_client reads them
    plain = client.infer("densenet_onnx", [given]).as_numpy(output_name)
    assert plain.shape == (CLASSES,)
    np.testing.assert_allclose(plain, flat, rtol=1e-6)


# ------------------------------------------------------------------------------- a refused model


@pytest.fixture
def mixed_repository(tmp_path: Path) -> Iterator[Path]:
    triton_root = triton_repository(tmp_path / "triton")
    root = tmp_path / "mixed"
    root.mkdir()
    (triton_root / "simple").rename(root / "simple")
    add_model(root / "graphdef" / "1" / "model.onnx")
    (root / "graphdef" / "config.pbtxt").write_text('name: "graphdef"\nplatform: "tensorflow_graphdef"\n')
    add_model(root / "both" / "1" / "model.onnx")
    (root / "both" / "config.pbtxt").write_text('name: "both"\n')
    (root / "both" / "config.yaml").write_text("max_batch_size: 4\n")
    yield root


def test_a_refused_platform_and_both_configs_beside_a_working_model(mixed_repository: Path) -> None:
    with in_process_server(mixed_repository, execution_providers=("CPUExecutionProvider",)) as running, \
            triton.InferenceServerClient(running.url) as mixed:
        index = {m.name: (m.state, m.reason) for m in mixed.get_model_repository_index().models}
        assert index["simple"] == ("READY", "")
        assert index["graphdef"][0] == "UNAVAILABLE"
        assert "platform: 'tensorflow_graphdef' is not served" in index["graphdef"][1]
        assert "has both config.pbtxt and config.yaml" in index["both"][1]
        inputs, first, second = add_sub_inputs(np.int32, "INT32")
        np.testing.assert_array_equal(mixed.infer("simple", inputs).as_numpy("OUTPUT0"), first + second)
        with pytest.raises(InferenceServerException) as excinfo:
            mixed.infer("graphdef", [])
        assert "tensorflow_graphdef" in excinfo.value.message()


# ---------------------------------------------- the grpc_explicit_* clients and grpc_client.py (raw stubs)


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def explicit_request(model: str, fill: Callable[[Any, int, int], None]) -> service_pb2.ModelInferRequest:
    """INPUT0 = 0..15, INPUT1 = ones, given in typed contents (`fill(contents, index, value)`)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
        tensor = request.inputs.add(name=name, shape=[1, 16])
        for i, value in enumerate(values):
            fill(tensor, i, value)
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT1")
    return request


def test_typed_contents_as_the_explicit_content_clients(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    def ints(tensor: Any, i: int, value: int, datatype: str = "INT32") -> None:
        tensor.datatype = datatype
        tensor.contents.int_contents.append(value)

    def text(tensor: Any, i: int, value: int) -> None:
        tensor.datatype = "BYTES"
        tensor.contents.bytes_contents.append(str(value).encode())

    for model, fill, dtype in (("simple", ints, np.int32),
                               ("simple_int8", lambda t, i, v: ints(t, i, v, "INT8"), np.int8)):
        response = stub.ModelInfer(explicit_request(model, fill))
        sums, differences = (np.frombuffer(raw, dtype=dtype) for raw in response.raw_output_contents)
        assert sums.tolist() == [i + 1 for i in range(16)] and differences.tolist() == [i - 1 for i in range(16)]
    response = stub.ModelInfer(explicit_request("simple_string", text))
    assert [int(x) for x in deserialize_bytes_tensor(response.raw_output_contents[0])] == list(range(1, 17))
    assert [int(x) for x in deserialize_bytes_tensor(response.raw_output_contents[1])] == list(range(-1, 15))


def test_raw_contents_and_health_as_grpc_client(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="densenet_onnx")).ready
    assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="densenet_onnx")).name == "densenet_onnx"
    assert stub.ModelConfig(service_pb2.ModelConfigRequest(name="densenet_onnx")).config.max_batch_size == 0
    request = service_pb2.ModelInferRequest(model_name="densenet_onnx", id="my request id")
    request.inputs.add(name="data_0", datatype="FP32", shape=[3, 224, 224])
    request.outputs.add(name="fc6_1")
    request.raw_input_contents.append(b"a" * (3 * 224 * 224 * 4))
    response = stub.ModelInfer(request)
    assert response.id == "my request id" and list(response.outputs[0].shape) == [CLASSES]
    assert len(response.raw_output_contents[0]) == CLASSES * 4


# --------------------------------------------------------------------- priorities and queue policies


def spin_input(data: np.ndarray) -> list[triton.InferInput]:
    given = triton.InferInput("x", list(data.shape), "FP32")
    given.set_data_from_numpy(data)
    return [given]


def two_at_once(server: InProcessServer, model: str, **options: Any) -> list[Any]:
    """Two requests that each keep the model's one instance busy, sent together: one waits in the queue."""
    async def run() -> list[Any]:
        async with triton_aio.InferenceServerClient(server.url) as aio:
            return await asyncio.gather(*(aio.infer(model, spin_input(busy()), **options) for _ in range(2)),
                                        return_exceptions=True)

    return asyncio.run(run())


def failures(outcomes: list[Any]) -> list[InferenceServerException]:
    return [o for o in outcomes if isinstance(o, BaseException)]


def test_reject_answers_a_queued_request_unavailable_as_triton(server: InProcessServer) -> None:
    [refused] = failures(two_at_once(server, "reject"))
    assert isinstance(refused, InferenceServerException)
    assert refused.status() == "StatusCode.UNAVAILABLE" and refused.message().startswith("Request timeout expired")


def test_delay_serves_a_timed_out_request_later(server: InProcessServer) -> None:
    assert failures(two_at_once(server, "delay")) == []


def test_a_request_timeout_is_ignored_where_the_policy_does_not_allow_overrides(server: InProcessServer) -> None:
    assert failures(two_at_once(server, "no_override", timeout=SHORT_TIMEOUT_US)) == []
    [refused] = failures(two_at_once(server, "override", timeout=SHORT_TIMEOUT_US))
    assert "Request timeout expired" in str(refused)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def test_a_priority_request_overtakes_the_queue(server: InProcessServer, client: triton.InferenceServerClient
                                                ) -> None:
    batcher = server.server.repository.get("prioritised").batcher
    assert batcher is not None
    answered: queue.Queue[str] = queue.Queue()

    def send(name: str, data: np.ndarray, priority: int) -> None:
        client.async_infer("prioritised", spin_input(data), lambda result, error: answered.put(name if error is None
                                                                                              else repr(error)),
                           priority=priority)

    send("running", busy(), 0)
    wait_for(lambda: batcher._batches_running == 1)  # it holds the model's one instance
    send("low", instant(), 2)
    send("high", instant(), 1)
    wait_for(lambda: batcher.queue_depth == 2)
    assert [answered.get(timeout=10) for _ in range(3)] == ["running", "high", "low"]


def test_model_config_answers_priorities_and_queue_policies(client: triton.InferenceServerClient) -> None:
    batching = client.get_model_config("prioritised", as_json=True)["config"]["dynamic_batching"]
    assert int(batching["priority_levels"]) == 2 and int(batching["default_priority_level"]) == 2
    assert "default_queue_policy" in batching


def test_server_name_answers_what_triton_clients_check(tmp_path: Path) -> None:
    """Triton's health-metadata examples check ServerMetadata's name for 'triton': --server-name makes it so."""
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path, server_name="triton", execution_providers=CPU_ONLY) as server, \
            triton.InferenceServerClient(server.url) as named:
        assert named.get_server_metadata().name == "triton"
