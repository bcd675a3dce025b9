"""Classify over HTTP with curl, as README.md shows it: one image as the body, or several as multipart/form-data,
with ?top_k; the answers equal the data plane's Classify of the same bytes (which the gRPC edge serves)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from onnx_serve.core.dataplane import EncodedImage
from PIL import Image, ImageDraw

from tests.helpers.inprocess import InProcessServer, server_fixture
from tests.helpers.metrics import value
from tests.helpers.serving import BUNDLED_MODELS, add_model

CURL_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "mnist-cnn").symlink_to(BUNDLED_MODELS / "mnist-cnn", target_is_directory=True)
    add_model(root / "add" / "1" / "model.onnx")  # no preprocess section: cannot classify
    return root


server = server_fixture()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dark "1" on white paper, as PNG and as JPEG, and a file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    digit = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(digit).line([(50, 15), (50, 85)], fill=0, width=9)
    digit.save(folder / "digit.png")
    digit.convert("RGB").save(folder / "digit.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return {"png": folder / "digit.png", "jpg": folder / "digit.jpg", "text": folder / "notes.txt"}


def curl(*args: str) -> tuple[int, dict[str, Any]]:
    """Runs curl; the HTTP status and the JSON body."""
    result = subprocess.run(["curl", "--silent", "--show-error", "--write-out", "\n%{http_code}", *args],
                            capture_output=True, text=True, timeout=CURL_TIMEOUT_S, check=True)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def url(server: InProcessServer, model: str = "mnist-cnn", query: str = "") -> str:
    return f"{server.http_url}/v2/models/{model}/classify{query}"


def predictions(answer: dict[str, Any]) -> list[list[tuple[str, int]]]:
    return [[(p["label"], p["index"]) for p in result["predictions"]] for result in answer["results"]]


def test_one_png_body(server: InProcessServer, images: dict[str, Path]) -> None:
    status, answer = curl("--data-binary", f"@{images['png']}", "-H", "Content-Type: image/png",
                          "-H", "X-Request-ID: digit-1", url(server, query="?top_k=3"))
    assert status == 200, answer
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("mnist-cnn", "1", "digit-1")
    [best] = answer["results"]
    assert best["predictions"][0]["label"] == "1"
    assert len(best["predictions"]) == 3
    scores = [p["score"] for p in best["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_the_answer_equals_the_data_planes_classify(server: InProcessServer, images: dict[str, Path]) -> None:
    status, answer = curl("--data-binary", f"@{images['jpg']}", "-H", "Content-Type: image/jpeg",
                          url(server, query="?top_k=5"))
    assert status == 200, answer
    plane = server.server.data_plane
    direct = server.server.call(plane.classify("mnist-cnn", "", [EncodedImage(images["jpg"].read_bytes())], 5),
                                timeout_s=20)
    assert predictions(answer) == [[(p.label, p.index) for p in row] for row in direct.predictions]
    for got, want in zip(answer["results"][0]["predictions"], direct.predictions[0], strict=True):
        assert got["score"] == pytest.approx(want.score, rel=1e-6)


def test_multipart_with_several_images(server: InProcessServer, images: dict[str, Path]) -> None:
    status, answer = curl("-F", f"image=@{images['png']};type=image/png", "-F",
                          f"image=@{images['jpg']};type=image/jpeg", url(server))
    assert status == 200, answer
    assert len(answer["results"]) == 2
    assert all(result["predictions"][0]["label"] == "1" for result in answer["results"])


def test_a_body_without_content_type_is_taken_as_an_image(server: InProcessServer, images: dict[str, Path]) -> None:
    # curl --data-binary without -H sends application/x-www-form-urlencoded; the image decoder sniffs the format
    status, answer = curl("--data-binary", f"@{images['png']}", url(server, query="?top_k=1"))
    assert status == 200 and len(answer["results"][0]["predictions"]) == 1


@pytest.mark.parametrize(("args", "status", "words"), [
    (["--data-binary", "@{text}", "-H", "Content-Type: image/png"], 400, "not a recognised image format"),
    (["--data-binary", "", "-H", "Content-Type: image/png"], 400, "image is empty"),
    (["--data-binary", "{{}}", "-H", "Content-Type: application/json"], 400, "not JSON"),
    (["--data-binary", "@{png}", "-H", "Content-Type: multipart/form-data"], 400, "boundary"),
    (["--data-binary", "@{png}", "-H", "Content-Type: multipart/form-data; boundary=zzz"], 400, "multipart body"),
])
def test_bad_images_and_bodies(server: InProcessServer, images: dict[str, Path], args: list[str], status: int,
                               words: str) -> None:
    args = [arg.format(text=images["text"], png=images["png"]) for arg in args]
    got, answer = curl(*args, url(server))
    assert got == status and words in answer["error"], answer


@pytest.mark.parametrize(("query", "words"), [
    ("?top_k=three", "top_k: expected an integer"),
    ("?top_k=-2", "top_k: must be positive"),
    ("?k=3", "unknown"),
])
def test_bad_queries(server: InProcessServer, images: dict[str, Path], query: str, words: str) -> None:
    status, answer = curl("--data-binary", f"@{images['png']}", "-H", "Content-Type: image/png",
                          url(server, query=query))
    assert status == 400 and words in answer["error"], answer


def test_models_that_cannot_classify(server: InProcessServer, images: dict[str, Path]) -> None:
    status, answer = curl("--data-binary", f"@{images['png']}", url(server, model="add"))
    assert status == 400 and "no preprocess section" in answer["error"]
    status, answer = curl("--data-binary", f"@{images['png']}", url(server, model="nope"))
    assert status == 404 and "Request for unknown model: 'nope'" in answer["error"]


def test_metrics_count_http_classify(server: InProcessServer, images: dict[str, Path]) -> None:
    curl("--data-binary", f"@{images['png']}", url(server))
    assert value(server.scrape(), "onnx_serve_requests_total", model="mnist-cnn", api="http_classify",
                 code="OK") >= 1

