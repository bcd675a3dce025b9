"""onnx_serve.client.client: how inputs become requests (no server), then every call against real servers: V2 infer
round trips, health and metadata, errors as ClientError, deadlines, the asyncio client, client-side
round-robin over several servers, TLS, mutual TLS and bearer tokens."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto
from onnx_serve.client.client import (
    AsyncClient,
    Client,
    ClientError,
    Prediction,
    StreamResult,
    _ChannelSettings,
    classify_request,
    image_list,
    image_proto,
    in_order,
)
from PIL import Image

from tests.helpers.inprocess import InProcessServer, connection_fixture, in_process_server, server_fixture
from tests.helpers.pki import write_pki
from tests.helpers.serving import (
    ServerProcess,
    add_model,
    conv_classifier_model,
    identity_model,
    running_server,
    slow_model,
    string_model,
)

FLAGS = ("--execution-providers", "cpu")
IDENTITY = {"BOOL": (TensorProto.BOOL, np.bool_), "UINT8": (TensorProto.UINT8, np.uint8),
            "INT16": (TensorProto.INT16, np.int16), "INT64": (TensorProto.INT64, np.int64),
            "FP16": (TensorProto.FLOAT16, np.float16), "FP64": (TensorProto.DOUBLE, np.float64)}
GREY_CONFIG = "preprocess: {color_mode: L, width: 8, height: 8}\nlabels: labels.txt\n"


# ------------------------------------------------------------------------------------ inputs -> requests


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_paths_and_bytes_travel_encoded(tmp_path: Path) -> None:
    data = png(Image.new("L", (3, 2), 7))
    (tmp_path / "a.png").write_bytes(data)
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), data, bytearray(data), memoryview(data)):
        assert image_proto(source).encoded == data
    with pytest.raises(FileNotFoundError):
        image_proto(tmp_path / "missing.png")


@pytest.mark.parametrize(("shape", "channels"), [((5, 4), 1), ((5, 4, 1), 1), ((5, 4, 3), 3), ((5, 4, 4), 4)])
def test_uint8_arrays_travel_as_raw_pixels(shape: tuple[int, ...], channels: int) -> None:
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    pixels = image_proto(array).pixels
    assert (pixels.width, pixels.height, pixels.channels) == (4, 5, channels)
    assert pixels.data == array.tobytes()


def test_strided_arrays_are_sent_row_major() -> None:
    array = np.arange(60, dtype=np.uint8).reshape(6, 10)[:, ::2]
    assert image_proto(array).pixels.data == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((4, 4), np.float32), "image 2: numpy images must be uint8 pixels (0..255), got dtype float32"),
    (np.zeros((4, 4), np.uint16), "got dtype uint16"),
    (np.zeros((4, 4, 2), np.uint8), "shape [4, 4, 2]; expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)"),
    (np.zeros((2, 4, 4, 3), np.uint8), "pass several images as a list"),
    (np.zeros((0, 4), np.uint8), "has no pixels"),
])
def test_unsupported_arrays_are_refused_clearly(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        image_proto(array, index=2)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_images_in_standard_modes_travel_as_raw_pixels(mode: str) -> None:
    image = Image.fromarray(np.arange(4 * 3 * 4, dtype=np.uint8).reshape(4, 3, 4), "RGBA").convert(mode)
    pixels = image_proto(image).pixels
    assert (pixels.width, pixels.height, pixels.channels, pixels.data) == (3, 4, len(mode), image.tobytes())


@pytest.mark.parametrize("mode", ["P", "LA", "1", "I;16", "CMYK"])
def test_other_pil_modes_travel_as_lossless_png(mode: str) -> None:
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5, "RGB").convert(mode)
    decoded = Image.open(io.BytesIO(image_proto(image).encoded))
    assert decoded.format == "PNG" and decoded.size == (4, 4)
    expected = image if mode != "CMYK" else image.convert("RGB")
    assert np.array_equal(np.asarray(decoded.convert("RGBA")), np.asarray(expected.convert("RGBA")))


def test_other_types_are_refused() -> None:
    with pytest.raises(TypeError, match="image 0: expected a path, bytes, a PIL image or a numpy array, got int"):
        image_proto(7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an image or a list of images, got int"):
        image_list(7)  # type: ignore[arg-type]


def test_one_image_or_many() -> None:
    array, pil = np.zeros((2, 2), np.uint8), Image.new("L", (2, 2))
    for single in ("a.png", Path("a.png"), b"x", array, pil):
        assert image_list(single) == [single]
    assert image_list([b"a", b"b"]) == [b"a", b"b"]
    assert image_list((b"a", array)) == [b"a", array]
    assert image_list(x for x in (b"a", b"b", b"c")) == [b"a", b"b", b"c"]


def test_classify_request_fields_and_top_k_checks() -> None:
    request = classify_request([b"a", b"b"], "m", 3, "2", "id-1")
    assert (request.model_name, request.model_version, request.top_k, request.id) == ("m", "2", 3, "id-1")
    assert [i.encoded for i in request.images] == [b"a", b"b"]
    assert classify_request(b"a", "m").top_k == 0  # the model's default
    assert classify_request(b"a", "m", 10**12).top_k == 2**32 - 1
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            classify_request(b"a", "m", bad)  # type: ignore[arg-type]


def settings(url: str, **kwargs: object) -> _ChannelSettings:
    arguments: dict[str, object] = {"tls": None, "root_certificates": None, "client_cert": None, "client_key": None,
                                    "tls_server_name": None, "token": None, "max_message_bytes": 1234,
                                    "load_balancing": "round_robin"}
    return _ChannelSettings.create(url, **{**arguments, **kwargs})  # type: ignore[arg-type]


def test_channel_settings_from_urls_and_options() -> None:
    plain = settings("10.0.0.1:8001")
    assert (plain.target, plain.credentials, plain.metadata) == ("10.0.0.1:8001", None, ())
    assert {("grpc.lb_policy_name", "round_robin"), ("grpc.max_send_message_length", 1234),
            ("grpc.max_receive_message_length", 1234)} <= set(plain.options)
    assert settings("dns:///onnx-serve-headless.ns.svc.cluster.local:8001").target == (
        "dns:///onnx-serve-headless.ns.svc.cluster.local:8001")
    assert (settings("http://h:1/").target, settings("http://h:1").credentials) == ("h:1", None)
    assert settings("https://h:443").target == "h:443" and settings("https://h:443").credentials is not None
    assert settings("grpcs://h:1").credentials is not None
    assert settings("h:1", tls=True).credentials is not None
    assert settings("h:1", root_certificates=b"pem").credentials is not None
    assert settings("h:1", token=" s3cret\n").metadata == (("authorization", "Bearer s3cret"),)
    assert ("grpc.ssl_target_name_override", "api.example") in settings("h:1", tls_server_name="api.example").options
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        settings("h:1", client_cert=b"cert")


def test_client_error_and_stream_result() -> None:
    error = ClientError("NOT_FOUND", "unknown model 'x'")
    assert (str(error), error.code, error.message) == ("NOT_FOUND: unknown model 'x'", "NOT_FOUND", "unknown model 'x'")
    top = [[Prediction("7", 7, 0.9)]]
    assert StreamResult(0, top).result() == top
    with pytest.raises(ClientError):
        StreamResult(1, error=error).result()
    shuffled = [StreamResult(i) for i in (2, 0, 3, 1, 5)]
    assert [r.index for r in in_order(shuffled)] == [0, 1, 2, 3, 5]


# ------------------------------------------------------------------------------------------ plain server


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-models")
    add_model(root / "add" / "1" / "model.onnx")
    string_model(root / "strings" / "1" / "model.onnx")
    slow_model(root / "slow" / "1" / "model.onnx", 500)
    for datatype, (onnx_type, _) in IDENTITY.items():
        identity_model(root / f"identity-{datatype.lower()}" / "1" / "model.onnx", onnx_type)
    conv_classifier_model(root / "grey" / "1" / "model.onnx")
    (root / "grey" / "config.yaml").write_text(GREY_CONFIG)
    (root / "grey" / "labels.txt").write_text("a\nb\nc\n")
    return root


server = server_fixture()
client = connection_fixture(functools.partial(Client, timeout=30))


def test_health_and_metadata(client: Client) -> None:
    assert client.live() and client.ready() and client.ready("add") and client.ready("add", "1")
    metadata = client.model_metadata("add")
    assert (metadata.name, metadata.versions, metadata.platform) == ("add", ("1",), "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [("a", "FP32", (-1, 4)), ("b", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [("sum", "FP32", (-1, 4))]
    assert not client.ready("nope")  # as Triton: an unknown model is not ready, not an error
    with pytest.raises(ClientError) as excinfo:
        client.model_metadata("nope")
    assert excinfo.value.code == "NOT_FOUND"


def test_infer_round_trips_raw_contents(client: Client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, np.float32)
    outputs = client.infer("add", {"a": a, "b": b}, outputs=["sum"])
    assert list(outputs) == ["sum"] and outputs["sum"].dtype == np.float32
    assert np.array_equal(outputs["sum"], a + b)


@pytest.mark.parametrize("datatype", IDENTITY)
def test_infer_every_datatype(client: Client, datatype: str) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2 if datatype == "BOOL" else 100, (5, 3)).astype(IDENTITY[datatype][1])
    (result,) = client.infer(f"identity-{datatype.lower()}", {"x": values}).values()
    assert result.dtype == values.dtype and np.array_equal(result, values)


def test_infer_bytes(client: Client) -> None:
    values = np.array([b"alpha", b"", "\u00fcnicode".encode()], dtype=np.object_)
    assert list(client.infer("strings", {"x": values})["y"]) == list(values)


def test_infer_errors_are_client_errors(client: Client) -> None:
    cases = [(lambda: client.infer("add", {"a": np.zeros((1, 4), np.float64), "b": np.zeros((1, 4), np.float64)}),
              "INVALID_ARGUMENT", "datatype FP64 does not match the model's FP32"),
             (lambda: client.infer("add", {"a": np.zeros((1, 4), np.float32)}), "INVALID_ARGUMENT", "missing input"),
             (lambda: client.infer("nope", {"a": np.zeros(1)}), "NOT_FOUND", "nope")]
    for call, code, message in cases:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert excinfo.value.code == code and message in excinfo.value.message
    with pytest.raises(TypeError, match="complex128 has no KServe V2 datatype"):
        client.infer("add", {"a": np.zeros(2, np.complex128)})


def test_deadline_exceeded(client: Client) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.infer("slow", {"x": np.zeros((1, 2), np.float32)}, timeout=0.05)
    assert excinfo.value.code == "DEADLINE_EXCEEDED"


def test_classify_accepts_every_kind_of_image(client: Client, tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    (tmp_path / "x.png").write_bytes(png(image))
    results = client.classify([tmp_path / "x.png", png(image), image, np.asarray(image), image.convert("RGB")],
                              model="grey", top_k=3)
    assert all(r == results[0] for r in results)
    assert {p.label for p in results[0]} == {"a", "b", "c"}


def test_stream_refuses_a_request_over_the_message_limit_alone(server: InProcessServer) -> None:
    image = png(Image.new("L", (8, 8), 90))
    huge = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)  # 160 kB of raw pixels
    with Client(server.url, timeout=30, max_message_bytes=100_000) as c:
        results = list(c.classify_stream([image, huge, image], model="grey", ordered=True))
        assert results[0].result() == results[2].result() == c.classify(image, model="grey")
    assert isinstance(results[1].error, ClientError) and results[1].error.code == "RESOURCE_EXHAUSTED"
    assert "request 1 is 160" in results[1].error.message


def test_leaving_a_stream_early_cancels_it_and_the_server_goes_on(client: Client) -> None:
    image = png(Image.new("L", (8, 8), 10))
    for ordered in (False, True):
        for result in client.classify_stream([image] * 500, model="grey", ordered=ordered):
            assert result.error is None and (result.index == 0 or not ordered)
            break
    assert len(client.classify([image] * 4, model="grey")) == 4


def test_server_unreachable_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5) as unreachable, pytest.raises(ClientError) as excinfo:
        unreachable.live()
    assert excinfo.value.code == "UNAVAILABLE"


def test_dns_target(server: InProcessServer) -> None:
    with Client(f"dns:///localhost:{server.grpc_port}", timeout=10) as c:
        assert c.ready()


def test_round_robin_spreads_calls_over_every_address(server: InProcessServer, repository: Path) -> None:
    """What a Kubernetes headless Service gives a dns:/// target: several addresses, each call to the next."""
    with in_process_server(repository, execution_providers=("CPUExecutionProvider",)) as second:
        target = f"ipv4:127.0.0.1:{server.grpc_port},127.0.0.1:{second.grpc_port}"
        before = [inference_count(s.url, "add") for s in (server, second)]
        with Client(target, timeout=10) as c:
            for _ in range(30):
                c.infer("add", {"a": np.zeros((1, 4), np.float32), "b": np.ones((1, 4), np.float32)})
        counts = [inference_count(s.url, "add") - b for s, b in zip((server, second), before, strict=True)]
    assert sum(counts) == 30 and min(counts) >= 5, counts  # both, once both connections are up


def inference_count(url: str, model: str) -> int:
    statistics = triton.InferenceServerClient(url).get_inference_statistics(model, as_json=True)
    return sum(int(m.get("inference_count", 0)) for m in statistics["model_stats"])


async def test_async_client(server: InProcessServer, tmp_path: Path) -> None:
    image = png(Image.new("L", (8, 8), 200))
    async with AsyncClient(server.url, timeout=30) as c:
        assert await c.live() and await c.ready() and await c.ready("grey")
        assert (await c.model_metadata("add")).inputs[0].name == "a"
        a = np.ones((3, 4), np.float32)
        assert np.array_equal((await c.infer("add", {"a": a, "b": a}))["sum"], a + a)
        [top] = await c.classify(image, model="grey")
        assert len(top) == 3
        requests: list[object] = [image, tmp_path / "missing.png", b"junk", [image, image]]
        results = {r.index: r async for r in c.classify_stream(requests, model="grey")}
        assert sorted(results) == [0, 1, 2, 3]
        assert results[0].result() == [top] and results[3].result() == [top, top]
        assert isinstance(results[1].error, FileNotFoundError)
        assert isinstance(results[2].error, ClientError) and results[2].error.code == "INVALID_ARGUMENT"
        with pytest.raises(ClientError) as excinfo:
            await c.classify(image, model="nope")
        assert excinfo.value.code == "NOT_FOUND"


# ------------------------------------------------------------------------------- TLS, mutual TLS, token


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_server(repository: Path, pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# accepted tokens\ntoken-one\ntoken-two\n")
    with running_server(repository, *FLAGS, "--tls-cert", str(pki["server-cert"]), "--tls-key",
                        str(pki["server-key"]), "--tls-client-ca", str(pki["ca"]),
                        "--auth-token-file", str(tokens)) as running:
        yield running


def test_mutual_tls_with_a_bearer_token(secure_server: ServerProcess, pki: dict[str, Path]) -> None:
    mtls = {"root_certificates": pki["ca"], "client_cert": pki["client-cert"], "client_key": pki["client-key"]}
    with Client(secure_server.url, token="token-two", timeout=10, **mtls) as c:  # type: ignore[arg-type]
        assert c.ready()
        a = np.ones((1, 4), np.float32)
        assert np.array_equal(c.infer("add", {"a": a, "b": a})["sum"], a + a)
    with Client(f"https://localhost:{secure_server.grpc_port}", token="token-one", timeout=10,
                **{k: v.read_bytes() for k, v in mtls.items()}) as c:  # type: ignore[arg-type]
        assert c.live()
    for token, code in ((None, "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED")):
        with Client(secure_server.url, token=token, timeout=10, **mtls) as c, \
                pytest.raises(ClientError) as excinfo:  # type: ignore[arg-type]
            c.ready()
        assert excinfo.value.code == code


def test_tls_refuses_plaintext_untrusted_servers_and_missing_client_certificates(
        secure_server: ServerProcess, pki: dict[str, Path]) -> None:
    attempts = [Client(secure_server.url, token="token-one", timeout=5),
                Client(secure_server.url, token="token-one", timeout=5, tls=True,
                       client_cert=pki["client-cert"], client_key=pki["client-key"]),
                Client(secure_server.url, token="token-one", timeout=5, root_certificates=pki["ca"])]
    for attempt in attempts:
        with attempt, pytest.raises(ClientError) as excinfo:
            attempt.live()
        assert excinfo.value.code == "UNAVAILABLE", excinfo.value


def test_token_reaches_the_classify_api(secure_server: ServerProcess, pki: dict[str, Path]) -> None:
    mtls = {"root_certificates": pki["ca"], "client_cert": pki["client-cert"], "client_key": pki["client-key"]}
    image = png(Image.new("L", (8, 8), 30))
    with Client(secure_server.url, token="token-one", timeout=10, **mtls) as c:  # type: ignore[arg-type]
        assert len(c.classify(image, model="grey")[0]) == 3
        assert [r.result() for r in c.classify_stream([image, image], model="grey", ordered=True)] == [
            c.classify(image, model="grey")] * 2
    with Client(secure_server.url, timeout=10, **mtls) as c, pytest.raises(ClientError) as excinfo:  # type: ignore
        list(c.classify_stream([image], model="grey"))
    assert excinfo.value.code == "UNAUTHENTICATED"

