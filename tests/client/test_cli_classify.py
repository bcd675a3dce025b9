"""`onnx-serve classify` as a user runs it (`python -m onnx_serve classify ...` in a subprocess) against a
real server: the table, JSON lines, and what bad files, unknown models and unreachable servers do."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_serve.client.client import Client
from PIL import Image, ImageDraw

from tests.helpers.inprocess import InProcessServer, in_process_server, server_fixture
from tests.helpers.pki import write_pki
from tests.helpers.serving import BUNDLED_MODELS, ROOT, conv_classifier_model

GREY_CONFIG = "preprocess: {color_mode: L, width: 8, height: 8}\nlabels: labels.txt\npostprocess: {top_k: 3}\n"
LABELS = ["zero", "one", "a much longer label"]
MNIST = BUNDLED_MODELS / "mnist-cnn"


def classify(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnx_serve", "classify", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-models")
    for name in ("grey", "no-preprocess"):
        conv_classifier_model(root / name / "1" / "model.onnx")
    (root / "grey" / "config.yaml").write_text(GREY_CONFIG)
    (root / "grey" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    if (MNIST / "1" / "model.onnx").is_file():
        os.symlink(MNIST, root / "mnist-cnn")
    return root


server = server_fixture()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good images (drawn with Pillow) and bad files."""
    directory = tmp_path_factory.mktemp("images")
    ring = Image.new("L", (40, 40), 0)
    ImageDraw.Draw(ring).ellipse((8, 4, 32, 36), outline=255, width=5)
    stroke = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(stroke).rectangle((17, 6, 23, 34), fill=0)
    files = {"ring.png": ring, "stroke.jpg": stroke, "noise.bmp": Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8))}
    paths: dict[str, Path] = {}
    for name, image in files.items():
        paths[name] = directory / name
        image.save(paths[name])
    paths["notes.txt"] = directory / "notes.txt"
    paths["notes.txt"].write_text("not an image\n")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    paths["truncated.png"] = directory / "truncated.png"
    paths["truncated.png"].write_bytes(buffer.getvalue()[:2000])
    paths["empty.png"] = directory / "empty.png"
    paths["empty.png"].write_bytes(b"")
    paths["missing.png"] = directory / "missing.png"
    paths["a directory"] = directory
    return paths


def parse_tables(stdout: str) -> list[tuple[str, list[tuple[int, float, int, str]]]]:
    """[(image, [(rank, score, index, label), ...]), ...] from the table output; checks the alignment too."""
    tables: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines():
        if line.startswith("  "):
            tables[-1][1].append(line)
        else:
            tables.append((line, []))
    parsed = []
    for image, lines in tables:
        assert re.fullmatch(r" +rank +score +index +label", lines[0]), lines[0]
        label_column = lines[0].index("label")
        rows = []
        for line in lines[1:]:
            assert line[label_column - 2:label_column] == "  " and line[label_column] != " ", (line, lines[0])
            rank, score, index = line[:label_column].split()
            rows.append((int(rank), float(score), int(index), line[label_column:]))
        parsed.append((image, rows))
    return parsed


def test_table_per_image(server: InProcessServer, images: dict[str, Path]) -> None:
    paths = [images["ring.png"], images["stroke.jpg"], images["noise.bmp"]]
    result = classify("--url", server.url, "--model", "grey", *paths)
    assert (result.returncode, result.stderr) == (0, "")
    tables = parse_tables(result.stdout)
    with Client(server.url) as client:
        expected = client.classify(paths, model="grey")
    assert [image for image, _ in tables] == [str(p) for p in paths]
    for (_, rows), top in zip(tables, expected, strict=True):
        assert [(rank, index, label) for rank, _, index, label in rows] == [
            (rank, p.index, p.label) for rank, p in enumerate(top, start=1)]
        # 4 significant digits, however small the score (the table once printed 7.2e-12 as 0.000000).
        assert [score for _, score, _, _ in rows] == pytest.approx([p.score for p in top], rel=1e-3, abs=0)
        assert {label for *_, label in rows} == set(LABELS)


def test_json_lines(server: InProcessServer, images: dict[str, Path]) -> None:
    paths = [images["ring.png"], images["noise.bmp"]]
    result = classify("--url", server.url, "--model", "grey", "--top-k", "2", "--json", *paths)
    assert (result.returncode, result.stderr) == (0, "")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    with Client(server.url) as client:
        expected = client.classify(paths, model="grey", top_k=2)
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line, top in zip(lines, expected, strict=True):
        assert list(line) == ["image", "model", "top"] and line["model"] == "grey"
        assert [list(entry) for entry in line["top"]] == [["label", "index", "score"]] * 2
        assert [(e["label"], e["index"]) for e in line["top"]] == [(p.label, p.index) for p in top]
        assert [np.float32(e["score"]) for e in line["top"]] == [np.float32(p.score) for p in top]  # exact


def test_bad_files_get_one_line_each_and_the_good_ones_still_print(server: InProcessServer,
                                                                     images: dict[str, Path]) -> None:
    bad = ["missing.png", "notes.txt", "truncated.png", "empty.png", "a directory"]
    paths = [images["ring.png"], *(images[name] for name in bad), images["stroke.jpg"]]
    result = classify("--url", server.url, "--model", "grey", "--json", *paths)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [
        str(images["ring.png"]), str(images["stroke.jpg"])]
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad) and "Traceback" not in result.stderr
    reasons = ["No such file or directory", "not a recognised image format (supported: JPEG, PNG",
               "truncated image data (PNG) (INVALID_ARGUMENT)", "image is empty (0 bytes) (INVALID_ARGUMENT)",
               "Is a directory"]
    for line, name, reason in zip(errors, bad, reasons, strict=True):
        assert line.startswith(f"onnx-serve classify: {images[name]}: "), line
        assert reason in line and "image 0" not in line, line


def test_a_reader_that_leaves_early_gets_no_traceback(server: InProcessServer, images: dict[str, Path]) -> None:
    command = [sys.executable, "-m", "onnx_serve", "classify", "--url", server.url, "--model", "grey",
               *[str(images["ring.png"])] * 600]  # more output than a pipe buffers
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == f"{images['ring.png']}\n"
        process.stdout.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 1
    assert stderr == ""


def test_unreachable_server_is_one_line_and_exit_2(images: dict[str, Path]) -> None:
    result = classify("--url", "127.0.0.1:1", "--model", "grey", images["ring.png"], images["stroke.jpg"])
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith("onnx-serve classify: 127.0.0.1:1: ") and line.endswith("(UNAVAILABLE)"), line


@pytest.mark.parametrize(("model", "reason"), [
    ("missing", "Request for unknown model: 'missing' is not found (NOT_FOUND)"),
    ("no-preprocess", "no preprocess section"),
])
def test_a_model_that_cannot_classify_stops_at_the_first_image(server: InProcessServer, images: dict[str, Path],
                                                               model: str, reason: str) -> None:
    result = classify("--url", server.url, "--model", model, images["ring.png"], images["stroke.jpg"])
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"onnx-serve classify: {server.url}: ") and reason in line, line


def test_url_from_the_environment_and_usage_errors(server: InProcessServer, images: dict[str, Path]) -> None:
    result = classify("--model", "grey", "--json", images["ring.png"], env={"ONNX_SERVE_URL": server.url})
    assert result.returncode == 0 and json.loads(result.stdout)["image"] == str(images["ring.png"])
    assert classify("--top-k", "0", images["ring.png"]).returncode == 2
    assert classify().returncode == 2
    usage = classify("--help")
    assert usage.returncode == 0
    for flag in ("--url", "--model", "--top-k", "--json", "--timeout", "--token-file", "--tls-ca"):
        assert flag in usage.stdout


def test_mutual_tls_and_token_file(repository: Path, images: dict[str, Path], tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    (tmp_path / "tokens").write_text("letmein\n")
    (tmp_path / "my-token").write_text("# the token\nletmein\n")
    (tmp_path / "wrong-token").write_text("nope\n")
    tls = ("--tls-ca", pki["ca"], "--tls-cert", pki["client-cert"], "--tls-key", pki["client-key"])
    with in_process_server(repository, execution_providers=("CPUExecutionProvider",),
                           auth_token_file=tmp_path / "tokens", tls_cert=pki["server-cert"],
                           tls_key=pki["server-key"], tls_client_ca=pki["ca"]) as secured:
        url = secured.url
        ok = classify("--url", url, "--model", "grey", "--token-file", tmp_path / "my-token", *tls,
                      images["ring.png"])
        by_name = classify("--url", f"https://localhost:{secured.grpc_port}", "--model", "grey", "--token-file",
                           tmp_path / "my-token", *tls, images["ring.png"])
        denied = classify("--url", url, "--model", "grey", "--token-file", tmp_path / "wrong-token", *tls,
                          images["ring.png"], images["stroke.jpg"])
        plaintext = classify("--url", url, "--model", "grey", "--token-file", tmp_path / "my-token",
                             images["ring.png"])
        missing = classify("--url", url, "--token-file", tmp_path / "absent", *tls, images["ring.png"])
    for result in (ok, by_name):
        assert (result.returncode, result.stderr) == (0, "") and result.stdout.startswith(str(images["ring.png"]))
    assert denied.returncode == 2 and denied.stderr.splitlines() == [
        f"onnx-serve classify: {url}: missing or invalid bearer token (UNAUTHENTICATED)"]
    assert plaintext.returncode == 2 and plaintext.stderr.rstrip().endswith("(UNAVAILABLE)")
    assert missing.returncode == 2 and "absent: No such file or directory" in missing.stderr
    for result in (denied, plaintext, missing):
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.skipif(not (MNIST / "1" / "model.onnx").is_file(), reason="the bundled models/mnist-cnn is not built yet")
def test_bundled_model_is_the_default(server: InProcessServer, images: dict[str, Path]) -> None:
    result = classify("--url", server.url, "--json", images["ring.png"], images["stroke.jpg"])
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["top"][0]["label"] for line in result.stdout.splitlines()] == ["0", "1"]
