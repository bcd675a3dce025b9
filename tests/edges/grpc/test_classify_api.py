"""The ImageClassifier API end to end: a real server, images drawn with Pillow, scores checked against
in-process ONNX Runtime on the same preprocessed tensor, every bad-image case, streams and batching.

Tiny conv models stand in for real classifiers; tests on the bundled MNIST model run once it exists."""

from __future__ import annotations

import functools
import io
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import yaml
from onnx import TensorProto, helper
from onnx_serve.client.client import Client, ClientError
from onnx_serve.imaging import decode_image, image_from_pixels, parse_limits, parse_preprocess, preprocess, top_k
from onnx_serve.protos.onnxserve.v1 import classify_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2_grpc as pb_grpc
from PIL import Image, ImageDraw

from tests.helpers.inprocess import InProcessServer, connection_fixture, server_fixture
from tests.helpers.serving import (
    BUNDLED_MODELS,
    conv_classifier_model,
    save_model,
    tensor,
)

MAX_MESSAGE_BYTES = 1024 * 1024
MNIST = BUNDLED_MODELS / "mnist-cnn"
HAS_MNIST = (MNIST / "1" / "model.onnx").is_file() and (MNIST / "config.yaml").is_file()
MNIST_DATA = Path(os.environ.get("ONNX_SERVE_MNIST_DATA", BUNDLED_MODELS.parent.parent / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="the bundled models/mnist-cnn is not built yet")

GREY_CONFIG = """\
max_batch_size: 32
dynamic_batching: {max_queue_delay_microseconds: 2000}
labels: labels.txt
preprocess: {color_mode: L, resize: exact, width: 8, height: 8, interpolation: bilinear, invert: auto}
postprocess: {top_k: 3}
limits: {max_image_bytes: 50000, max_image_pixels: 1000000, max_images_per_request: 4}
"""
RGB_CONFIG = """\
max_batch_size: 16
labels: labels.txt
preprocess:
  color_mode: BGR
  resize: shorter_side
  crop_fraction: 0.875
  width: 6
  height: 6
  interpolation: bicubic
  invert: false
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  layout: NHWC
postprocess: {softmax: true, top_k: 2}
"""
BATCHED_CONFIG = """\
max_batch_size: 32
dynamic_batching: {max_queue_delay_microseconds: 200000}  # long enough for threads on a slow CI machine to meet
preprocess: {color_mode: L, width: 8, height: 8}
"""


def nhwc_logits_model(path: Path, classes: int = 4, size: int = 6) -> Path:
    """[N, size, size, 3] -> Transpose -> Conv(3->classes) -> GlobalAveragePool -> Flatten: logits [N, classes]."""
    w = np.random.default_rng(1).standard_normal((classes, 3, 3, 3)).astype(np.float32)
    weight = helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist())
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "nhwc", [tensor("image", TensorProto.FLOAT, ["N", size, size, 3])],
                              [tensor("logits", TensorProto.FLOAT, ["N", classes])], initializer=[weight])
    return save_model(graph, path)


def build_repository(root: Path) -> Path:
    for name, config, labels in (("grey", GREY_CONFIG, "zero\none\ntwo\n"), ("batched", BATCHED_CONFIG, None),
                                 ("no-preprocess", None, None)):
        conv_classifier_model(root / name / "1" / "model.onnx")
        if config:
            (root / name / "config.yaml").write_text(config)
        if labels:
            (root / name / "labels.txt").write_text(labels)
    nhwc_logits_model(root / "rgb" / "1" / "model.onnx")
    (root / "rgb" / "config.yaml").write_text(RGB_CONFIG)
    (root / "rgb" / "labels.txt").write_text("red\ngreen\n")  # shorter than the 4 classes: the rest get indexes
    if HAS_MNIST:
        os.symlink(MNIST, root / "mnist-cnn")
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("classify-models"))


server = server_fixture(max_message_bytes=MAX_MESSAGE_BYTES)
client = connection_fixture(functools.partial(Client, timeout=30))


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[pb_grpc.ImageClassifierStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.ImageClassifierStub(channel)


# ----------------------------------------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def stroke(size: int, ink: int = 255, paper: int = 0) -> Image.Image:
    """A thick vertical stroke: a "1"."""
    image = Image.new("L", (size, size), paper)
    half_width, half_height = max(1, round(size * 0.07)), round(size * 0.32)
    ImageDraw.Draw(image).rectangle((size // 2 - half_width, size // 2 - half_height,
                                     size // 2 + half_width, size // 2 + half_height), fill=ink)
    return image


def ring(size: int, ink: int = 255, paper: int = 0) -> Image.Image:
    """An upright ellipse outline: a "0"."""
    image = Image.new("L", (size, size), paper)
    ImageDraw.Draw(image).ellipse((round(size * 0.25), round(size * 0.15), round(size * 0.75), round(size * 0.85)),
                                  outline=ink, width=max(2, round(size * 0.1)))
    return image


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encode(noise(24, 12, seed=3), "JPEG", exif=exif.tobytes())


def palette_gif() -> bytes:
    return encode(ring(20).convert("P"), "GIF", transparency=0)


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, and no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


SAMPLES: dict[str, Callable[[], bytes]] = {
    "stroke-png": lambda: encode(stroke(28)),
    "ring-jpeg": lambda: encode(ring(64, ink=0, paper=255), "JPEG", quality=90),
    "rgba-png": lambda: encode(noise(10, 14, "RGBA", seed=1)),
    "grey-bmp": lambda: encode(noise(9, 9, "L", seed=2), "BMP"),
    "palette-gif": palette_gif,
    "exif-rotated-jpeg": rotated_jpeg,
    "16-bit-png": lambda: encode(Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)),
    "webp": lambda: encode(noise(16, 11, seed=4), "WEBP", lossless=True),
    "tiff": lambda: encode(noise(13, 7, seed=5), "TIFF"),
}


# ------------------------------------------------------------------------------------ in-process reference


@functools.cache
def _session(model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def in_process_scores(model_dir: Path, images: list[bytes | np.ndarray]) -> np.ndarray:
    """Every class's score for each image, (images, classes): the server's preprocessing code, then ONNX
    Runtime in this process on the whole batch."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    where = str(model_dir / "config.yaml")
    cfg = parse_preprocess(config["preprocess"], where)
    limits = parse_limits(config.get("limits") or {}, where)
    tensors = []
    for image in images:
        if isinstance(image, np.ndarray):
            height, width = image.shape[:2]
            channels = 1 if image.ndim == 2 else image.shape[2]
            decoded = image_from_pixels(image.tobytes(), width, height, channels, limits)
        else:
            decoded = decode_image(image, limits)
        tensors.append(preprocess(decoded, cfg))
    session = _session(model_dir / "1" / "model.onnx")
    (scores,) = session.run(None, {session.get_inputs()[0].name: np.stack(tensors)})
    softmax = bool((config.get("postprocess") or {}).get("softmax", False))
    rows = top_k(scores, scores.shape[1], softmax)
    return np.array([[p.score for p in sorted(row, key=lambda p: p.index)] for row in rows])


def served_scores(client: Client, model: str, image: bytes | np.ndarray, classes: int) -> np.ndarray:
    [predictions] = client.classify(image, model=model, top_k=classes)
    assert [p.score for p in predictions] == sorted((p.score for p in predictions), reverse=True)
    scores = np.full(classes, np.nan)
    for p in predictions:
        scores[p.index] = p.score
    return scores


def assert_same_scores(served: np.ndarray, expected: np.ndarray) -> None:
    assert np.max(np.abs(served - expected)) <= 1e-5, (served, expected)
    assert int(np.argmax(served)) == int(np.argmax(expected))


# ------------------------------------------------------------------------------------------------ tests


def test_classifies_drawn_images_in_order_with_labels(client: Client) -> None:
    images = [encode(stroke(28)), encode(ring(40), "JPEG"), ring(12), np.asarray(stroke(8))]
    results = client.classify(images, model="grey")
    assert len(results) == 4
    for predictions in results:
        assert len(predictions) == 3  # the config's top_k
        assert {p.label for p in predictions} == {"zero", "one", "two"}
        assert {p.index for p in predictions} == {0, 1, 2}
        assert sum(p.score for p in predictions) == pytest.approx(1.0, abs=1e-5)
    alone = [client.classify(image, model="grey")[0] for image in images]
    assert [[p.index for p in r] for r in alone] == [[p.index for p in r] for r in results]


def test_top_k_overrides_the_default_and_is_clipped_to_the_classes(client: Client) -> None:
    assert len(client.classify(encode(ring(16)), model="grey", top_k=1)[0]) == 1
    assert len(client.classify(encode(ring(16)), model="grey", top_k=50)[0]) == 3


def test_response_names_the_model_version_and_echoes_the_id(stub: pb_grpc.ImageClassifierStub) -> None:
    request = pb.ClassifyRequest(model_name="grey", id="req-42", images=[pb.Image(encoded=encode(ring(9)))])
    response = stub.Classify(request, timeout=30)
    assert (response.model_name, response.model_version, response.id) == ("grey", "1", "req-42")


@pytest.mark.parametrize("sample", SAMPLES)
def test_served_scores_equal_in_process_onnxruntime(client: Client, repository: Path, sample: str) -> None:
    image = SAMPLES[sample]()
    for model, classes in (("grey", 3), ("rgb", 4)):
        expected = in_process_scores(repository / model, [image])[0]
        assert_same_scores(served_scores(client, model, image, classes), expected)


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 3), (9, 7, 4), (30, 50, 3)])
def test_raw_pixels_equal_in_process_onnxruntime(client: Client, repository: Path, shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for model, classes in (("grey", 3), ("rgb", 4)):
        expected = in_process_scores(repository / model, [pixels])[0]
        assert_same_scores(served_scores(client, model, pixels, classes), expected)


def test_labels_missing_from_a_short_labels_file_are_indexes(client: Client) -> None:
    [predictions] = client.classify(noise(8, 8), model="rgb", top_k=4)
    assert {p.index: p.label for p in predictions} == {0: "red", 1: "green", 2: "2", 3: "3"}


# ------------------------------------------------------------------------------------------- bad images

GOOD = pb.Image(encoded=encode(stroke(16)))
BAD_IMAGES: dict[str, tuple[pb.Image, str]] = {
    "empty bytes": (pb.Image(encoded=b""), "empty"),
    "random bytes": (pb.Image(encoded=np.random.default_rng(0).bytes(3000)), "not a recognised image format"),
    "text file": (pb.Image(encoded=b"just some text, not an image\n"), "not a recognised image format"),
    "truncated png": (pb.Image(encoded=encode(noise(64, 64))[:4000]), "truncated"),
    "truncated jpeg": (pb.Image(encoded=encode(noise(64, 64), "JPEG")[:1500]), "truncated"),
    "corrupt png header": (pb.Image(encoded=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "PNG"),
    "bomb header over our limit": (pb.Image(encoded=png_header(2000, 2000)), "4000000 pixels, above the limit"),
    "bomb header over pillow's": (pb.Image(encoded=png_header(30000, 30000)), "decompression bomb"),
    "oversized bytes": (pb.Image(encoded=b"\x89PNG" + bytes(60000)), "60004 bytes, above the limit of 50000"),
    "raw pixels of the wrong size": (pb.Image(pixels=pb.RawPixels(data=bytes(63), width=8, height=8, channels=1)),
                                     "needs 64 bytes, got 63"),
    "raw pixels with 2 channels": (pb.Image(pixels=pb.RawPixels(data=bytes(32), width=4, height=4, channels=2)),
                                   "channels must be 1, 3 or 4"),
    "raw pixels of zero width": (pb.Image(pixels=pb.RawPixels(data=b"", width=0, height=4, channels=1)),
                                 "width must be a positive integer"),
    "raw pixels over the pixel limit": (
        pb.Image(pixels=pb.RawPixels(data=bytes(1001 * 1000), width=1001, height=1000, channels=1)),
        "above the limit of 1000000"),
    "no source": (pb.Image(), "neither encoded bytes nor raw pixels"),
}


def assert_still_serving(stub: pb_grpc.ImageClassifierStub) -> None:
    response = stub.Classify(pb.ClassifyRequest(model_name="grey", images=[GOOD, GOOD]), timeout=30)
    assert len(response.results) == 2 and all(len(r.predictions) == 3 for r in response.results)


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_is_invalid_argument_naming_index_and_reason(stub: pb_grpc.ImageClassifierStub, case: str) -> None:
    image, reason = BAD_IMAGES[case]
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Classify(pb.ClassifyRequest(model_name="grey", images=[GOOD, image, GOOD]), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT, excinfo.value.details()
    assert excinfo.value.details().startswith("image 1: "), excinfo.value.details()
    assert reason in excinfo.value.details()
    assert_still_serving(stub)


@pytest.mark.parametrize(("request_", "code", "message"), [
    (pb.ClassifyRequest(model_name="grey", images=[GOOD] * 5), "INVALID_ARGUMENT", "5 images, above the limit of 4"),
    (pb.ClassifyRequest(model_name="grey"), "INVALID_ARGUMENT", "holds no image"),
    (pb.ClassifyRequest(model_name="no-preprocess", images=[GOOD]), "INVALID_ARGUMENT", "no preprocess section"),
    (pb.ClassifyRequest(model_name="missing", images=[GOOD]), "NOT_FOUND", "missing"),
    (pb.ClassifyRequest(model_name="grey", model_version="7", images=[GOOD]), "NOT_FOUND", "7"),
    (pb.ClassifyRequest(model_name="grey", images=[pb.Image(encoded=bytes(MAX_MESSAGE_BYTES + 1))]),
     "RESOURCE_EXHAUSTED", ""),
], ids=["too many images", "no image", "no preprocess config", "unknown model", "unknown version",
        "message over the size limit"])
def test_bad_request_status(stub: pb_grpc.ImageClassifierStub, request_: pb.ClassifyRequest, code: str,
                            message: str) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Classify(request_, timeout=30)
    assert excinfo.value.code().name == code, excinfo.value.details()
    assert message in (excinfo.value.details() or "")
    assert_still_serving(stub)


def test_client_raises_client_error_with_the_status_name(client: Client) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.classify([encode(ring(8)), b"nope"], model="grey")
    assert excinfo.value.code == "INVALID_ARGUMENT"
    assert excinfo.value.message.startswith("image 1: not a recognised image format")
    with pytest.raises(ClientError, match="NOT_FOUND"):
        client.classify(encode(ring(8)), model="missing")


def test_bad_images_in_concurrent_requests_do_not_disturb_good_ones(client: Client) -> None:
    good, bad = encode(stroke(20)), [case[0] for case in BAD_IMAGES.values() if case[0].HasField("encoded")]
    expected = client.classify(good, model="grey")

    def one(i: int) -> list | str:
        try:
            if i % 2:
                return client.classify(good, model="grey")
            return client.classify(bad[i // 2 % len(bad)].encoded, model="grey")
        except ClientError as exc:
            return exc.code

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(40)))
    assert all(outcome == expected for outcome in outcomes[1::2])
    assert set(outcomes[0::2]) == {"INVALID_ARGUMENT"}


# -------------------------------------------------------------------------------------- stream, batching


def test_stream_answers_every_request_matched_by_id(stub: pb_grpc.ImageClassifierStub) -> None:
    requests = [
        pb.ClassifyRequest(model_name="grey", id="two-images", images=[GOOD, pb.Image(encoded=encode(ring(30)))]),
        pb.ClassifyRequest(model_name="grey", id="bad", images=[GOOD, pb.Image(encoded=b"garbage")]),
        pb.ClassifyRequest(model_name="missing", id="unknown-model", images=[GOOD]),
        pb.ClassifyRequest(model_name="rgb", id="rgb", images=[GOOD], top_k=1),
        *(pb.ClassifyRequest(model_name="grey", id=f"n{i}", images=[GOOD]) for i in range(10)),
    ]
    responses = {r.response.id: r for r in stub.ClassifyStream(iter(requests), timeout=30)}
    assert sorted(responses) == sorted(r.id for r in requests)
    assert [len(r.predictions) for r in responses["two-images"].response.results] == [3, 3]
    assert (responses["bad"].error_code, responses["unknown-model"].error_code) == ("INVALID_ARGUMENT", "NOT_FOUND")
    assert responses["bad"].error_message.startswith("image 1: ")
    assert len(responses["rgb"].response.results[0].predictions) == 1
    assert responses["rgb"].response.model_name == "rgb"
    for i in range(10):
        assert not responses[f"n{i}"].error_code
        assert responses[f"n{i}"].response.results[0] == responses["two-images"].response.results[0]


def test_client_stream_keeps_going_past_bad_requests(client: Client, tmp_path: Path) -> None:
    good = encode(ring(24))
    requests: list[object] = [good, [good, stroke(10)], tmp_path / "missing.png", b"junk", *[good] * 20]
    results = list(client.classify_stream(requests, model="grey", ordered=True))
    assert [r.index for r in results] == list(range(len(requests)))
    expected = client.classify(good, model="grey")
    assert results[0].result() == expected
    assert len(results[1].result()) == 2
    assert isinstance(results[2].error, FileNotFoundError)
    assert isinstance(results[3].error, ClientError) and results[3].error.code == "INVALID_ARGUMENT"
    assert all(r.result() == expected for r in results[4:])


def test_images_from_concurrent_requests_share_batches(client: Client, server: InProcessServer) -> None:
    image = encode(ring(28))
    start = threading.Barrier(32)

    def one(_: int) -> list:
        start.wait()
        return client.classify(image, model="batched")

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert all(r == results[0] for r in results)
    statistics = triton.InferenceServerClient(server.url).get_inference_statistics("batched", as_json=True)
    [model] = statistics["model_stats"]
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model["batch_stats"]}
    assert int(model["inference_count"]) == 32 == sum(size * count for size, count in sizes.items())
    assert max(sizes) > 1 and int(model["execution_count"]) < 32, sizes


# ------------------------------------------------------------------------------------ the bundled model


def digit_images() -> list[tuple[str, bytes]]:
    """(expected label, encoded image) for strokes ("1") and rings ("0"): both polarities, sizes and formats."""
    return [(expected, encode(draw(size, ink, 255 - ink), fmt))
            for expected, draw in (("1", stroke), ("0", ring)) for size in (28, 64, 200)
            for ink in (255, 0) for fmt in ("PNG", "JPEG")]


DIGIT_IDS = [f"{draw}-{size}px-{polarity}-{fmt}" for draw in ("stroke", "ring") for size in (28, 64, 200)
             for polarity in ("white-on-black", "black-on-white") for fmt in ("png", "jpeg")]


@needs_mnist
@pytest.mark.parametrize(("expected", "image"), digit_images(), ids=DIGIT_IDS)
def test_bundled_model_reads_drawn_digits(client: Client, expected: str, image: bytes) -> None:
    [predictions] = client.classify(image)  # the default model is mnist-cnn
    assert predictions[0].label == expected, predictions


def served_batch_scores(client: Client, images: list[bytes], per_request: int, classes: int = 10) -> np.ndarray:
    """(images, classes) scores served by mnist-cnn, sent over one stream, `per_request` images a request."""
    requests = [images[i:i + per_request] for i in range(0, len(images), per_request)]
    scores = np.full((len(images), classes), np.nan)
    for result in client.classify_stream(requests, top_k=classes):
        for offset, predictions in enumerate(result.result()):
            for p in predictions:
                scores[result.index * per_request + offset, p.index] = p.score
    return scores


def assert_same_batch_scores(served: np.ndarray, expected: np.ndarray) -> None:
    assert np.max(np.abs(served - expected)) <= 1e-5
    assert np.array_equal(served.argmax(axis=1), expected.argmax(axis=1))


@needs_mnist
def test_bundled_model_serves_the_same_scores_as_in_process_onnxruntime(client: Client) -> None:
    images = [image for _, image in digit_images()] + [sample() for sample in SAMPLES.values()]
    assert_same_batch_scores(served_batch_scores(client, images, 3), in_process_scores(MNIST, images))


@needs_mnist
@pytest.mark.skipif(not MNIST_DATA.is_dir(), reason=f"MNIST data not found at {MNIST_DATA}")
def test_bundled_model_on_real_handwritten_digits_matches_onnxruntime(client: Client) -> None:
    """Validation digits (never trained on) as white-on-black PNGs and as black-on-white JPEGs (scans)."""
    from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

    dataset = load_mnist(MNIST_DATA)
    _, validation = stratified_split(dataset.labels, 1000, SPLIT_SEED)
    chosen = validation[:300]
    pngs = [encode(Image.fromarray(dataset.images[i])) for i in chosen]
    jpegs = [encode(Image.fromarray(255 - dataset.images[i]), "JPEG", quality=95) for i in chosen]
    for images in (pngs, jpegs):
        served = served_batch_scores(client, images, 16)
        assert_same_batch_scores(served, in_process_scores(MNIST, images))
        assert np.mean(served.argmax(axis=1) == dataset.labels[chosen]) >= 0.97
