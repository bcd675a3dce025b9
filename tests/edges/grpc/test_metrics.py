"""Prometheus metrics against a real server: exact counts after known traffic on both APIs, gauges back to 0
when idle, a clean `promtool check metrics`, a real Prometheus scraping the same numbers, and aggregation
across worker processes."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from onnx_serve.core.metrics import METRIC_NAMES
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import InProcessServer, in_process_server
from tests.helpers.metrics import samples, value
from tests.helpers.prometheus import query_value, running_prometheus, wait_for_scrape
from tests.helpers.serving import add_model, conv_classifier_model, running_server

GOOD_INFER, BAD_INFER, UNKNOWN, GOOD_CLASSIFY, BAD_CLASSIFY = 5, 3, 2, 4, 2
CONV_CONFIG = """\
max_batch_size: 8
preprocess: {color_mode: L, resize: exact, width: 8, height: 8, invert: false}
"""


def png(color: int = 255) -> bytes:
    image = Image.new("L", (20, 20), 0)
    image.paste(color, (5, 5, 15, 15))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def send_traffic(url: str) -> None:
    with tc.InferenceServerClient(url) as client:
        for i in range(GOOD_INFER + BAD_INFER):
            rows = 2 if i < GOOD_INFER else 3
            a = tc.InferInput("a", [rows, 4 if i < GOOD_INFER else 5], "FP32")
            a.set_data_from_numpy(np.ones(a.shape(), np.float32))
            b = tc.InferInput("b", a.shape(), "FP32")
            b.set_data_from_numpy(np.ones(a.shape(), np.float32))
            try:
                client.infer("add", [a, b])
            except InferenceServerException as exc:
                assert exc.status() == "StatusCode.INVALID_ARGUMENT"
        for _ in range(UNKNOWN):
            with pytest.raises(InferenceServerException):
                client.infer("no-such-model", [a, b])
    with grpc.insecure_channel(url) as channel:
        stub = classify_pb2_grpc.ImageClassifierStub(channel)
        for _ in range(GOOD_CLASSIFY):
            stub.Classify(classify_pb2.ClassifyRequest(model_name="conv", images=[classify_pb2.Image(encoded=png())]))
        for _ in range(BAD_CLASSIFY):
            with pytest.raises(grpc.RpcError) as error:
                stub.Classify(classify_pb2.ClassifyRequest(model_name="conv",
                                                           images=[classify_pb2.Image(encoded=b"not an image")]))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics-repo")
    add_model(root / "add" / "1" / "model.onnx")
    conv_classifier_model(root / "conv" / "1" / "model.onnx")
    (root / "conv" / "config.yaml").write_text(CONV_CONFIG)
    return root


@pytest.fixture(scope="module")
def server_after_traffic(repository: Path) -> Iterator[tuple[InProcessServer, str]]:
    with in_process_server(repository) as server:
        send_traffic(server.url)
        yield server, server.scrape()


def test_counts_are_exact(server_after_traffic: tuple[InProcessServer, str]) -> None:
    _, text = server_after_traffic
    requests = "onnx_serve_requests_total"
    assert value(text, requests, model="add", version="1", api="infer", code="OK") == GOOD_INFER
    assert value(text, requests, model="add", version="1", api="infer", code="INVALID_ARGUMENT") == BAD_INFER
    assert value(text, requests, model="(unknown)", version="", api="infer", code="NOT_FOUND") == UNKNOWN
    assert 'model="no-such-model"' not in text
    assert value(text, requests, model="conv", api="classify", code="OK") == GOOD_CLASSIFY
    assert value(text, requests, model="conv", api="classify", code="INVALID_ARGUMENT") == BAD_CLASSIFY
    duration = "onnx_serve_request_duration_seconds_count"
    assert value(text, duration, model="add", api="infer") == GOOD_INFER + BAD_INFER
    assert value(text, duration, model="conv", api="classify") == GOOD_CLASSIFY + BAD_CLASSIFY
    assert value(text, "onnx_serve_inferences_total", model="add") == 2 * GOOD_INFER
    assert value(text, "onnx_serve_inferences_total", model="conv") == GOOD_CLASSIFY
    assert value(text, "onnx_serve_batch_size_sum", model="add") == 2 * GOOD_INFER
    assert value(text, "onnx_serve_inference_duration_seconds_count", model="add") == \
        value(text, "onnx_serve_batch_size_count", model="add")
    assert value(text, "onnx_serve_queue_duration_seconds_count", model="add") == GOOD_INFER
    assert value(text, "onnx_serve_preprocess_duration_seconds_count", model="conv") == GOOD_CLASSIFY


def test_gauges_and_info(server_after_traffic: tuple[InProcessServer, str]) -> None:
    _, text = server_after_traffic
    assert value(text, "onnx_serve_queue_depth") == 0
    assert value(text, "onnx_serve_inflight_requests") == 0
    assert value(text, "onnx_serve_model_ready", model="add", version="1") == 1
    assert value(text, "onnx_serve_model_ready", model="conv", version="1") == 1
    assert value(text, "onnx_serve_execution_provider_info", model="add", provider="CPUExecutionProvider") == 1
    assert value(text, "onnx_serve_model_load_duration_seconds_count", model="add") == 1
    assert value(text, "onnx_serve_build_info") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    names = {name for name, _ in samples(text)}
    for metric in METRIC_NAMES:
        assert any(n == metric or n.startswith(metric + "_") for n in names), metric


def test_label_values_are_bounded(tmp_path: Path) -> None:
    """Label values come from the repository, never from the client: every name it does not have (however
    many, however long) is the one `(unknown)` series; a model it has keeps its name, and so does a
    directory that failed to load."""
    add_model(tmp_path / "add" / "1" / "model.onnx")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    a = tc.InferInput("a", [1, 4], "FP32")
    a.set_data_from_numpy(np.ones((1, 4), np.float32))
    b = tc.InferInput("b", [1, 4], "FP32")
    b.set_data_from_numpy(np.ones((1, 4), np.float32))
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("x" * 500)
        with pytest.raises(InferenceServerException):
            client.infer("y" * 500, [a, b])
        for i in range(150):  # more fresh names than any allowance of named unknown series
            with pytest.raises(InferenceServerException):
                client.infer(f"ghost-{i}", [a, b])
        with pytest.raises(InferenceServerException):
            client.infer("broken", [a, b])
        client.infer("add", [a, b])
        text = server.scrape()
    models = {dict(labels)["model"] for _, labels in samples(text) if "model" in dict(labels)}
    assert models == {"add", "broken", "(unknown)"}
    assert value(text, "onnx_serve_requests_total", model="(unknown)", api="infer", code="NOT_FOUND") == 151
    assert value(text, "onnx_serve_requests_total", model="broken", api="infer") == 1
    assert value(text, "onnx_serve_requests_total", model="add", api="infer", code="OK") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_promtool_accepts_the_exposition(server_after_traffic: tuple[InProcessServer, str]) -> None:
    _, text = server_after_traffic
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing (Debian package prometheus)")
def test_real_prometheus_scrapes_the_same_numbers(repository: Path, tmp_path: Path) -> None:
    with running_server(repository) as server:
        send_traffic(server.url)
        with running_prometheus([f"127.0.0.1:{server.metrics_port}"], tmp_path, job="onnx-serve") as prometheus:
            wait_for_scrape(prometheus, job="onnx-serve")
            ok = 'onnx_serve_requests_total{job="onnx-serve",model="add",api="infer",code="OK"}'
            assert query_value(prometheus, ok) == GOOD_INFER
            bad = 'sum(onnx_serve_requests_total{model="add",code="INVALID_ARGUMENT"})'
            assert query_value(prometheus, bad) == BAD_INFER
            classify = 'sum(onnx_serve_requests_total{model="conv",api="classify"})'
            assert query_value(prometheus, classify) == GOOD_CLASSIFY + BAD_CLASSIFY
            assert query_value(prometheus, 'sum(onnx_serve_inferences_total{model="add"})') == 2 * GOOD_INFER
            assert query_value(prometheus, 'onnx_serve_model_ready{model="conv"}') == 1


def test_workers_aggregate_into_one_exposition(repository: Path) -> None:
    with running_server(repository, "--workers", "2") as server:
        for _ in range(3):  # new connections, so SO_REUSEPORT spreads them over both workers
            send_traffic(server.url)
        text = server.scrape()
        assert value(text, "onnx_serve_requests_total", model="add", code="OK") == 3 * GOOD_INFER
        assert value(text, "onnx_serve_requests_total", model="conv", code="OK") == 3 * GOOD_CLASSIFY
        assert value(text, "onnx_serve_inferences_total", model="add") == 6 * GOOD_INFER
        assert value(text, "onnx_serve_model_ready", model="add") == 1
        assert value(text, "onnx_serve_inflight_requests") == 0
        send_traffic(server.url)
        later = server.scrape()
        assert value(later, "onnx_serve_requests_total", model="add", code="OK") == 4 * GOOD_INFER
