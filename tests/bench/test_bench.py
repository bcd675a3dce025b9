"""`onnx-serve bench` against a real server on 127.0.0.1, and `--raw` on a tiny model. Only sane numbers are
asserted (positive throughput, ordered percentiles, zero errors, the server-side breakdown present): the
machine is small and shared, so timings are never asserted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from onnx_serve.bench.load import is_stable
from onnx_serve.bench.probe import ModelCounters
from onnx_serve.cli import main
from onnx_serve.protos.inference import grpc_service_pb2 as pb

from tests.helpers.serving import ServerProcess, conv_classifier_model, running_server

MODEL = "tiny"
SIZE = 8
CONFIG = f"""\
max_batch_size: 16
dynamic_batching: {{max_queue_delay_microseconds: 200}}
preprocess: {{color_mode: L, resize: exact, width: {SIZE}, height: {SIZE}}}
"""
SHORT = ["--duration", "1", "--warmup", "0.3", "--window", "0.5", "--max-extra-windows", "0", "--no-progress"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("bench-repo")
    conv_classifier_model(repository / MODEL / "1" / "model.onnx", size=SIZE)
    (repository / MODEL / "config.yaml").write_text(CONFIG)
    with running_server(repository, "--execution-providers", "cpu") as process:
        yield process


def bench(*args: str) -> int:
    return main(["bench", *args])


def assert_sane(level: dict, items_per_request: int = 1) -> None:
    latency = level["latency_ms"]
    assert level["requests"] > 0 and level["requests_per_s"] > 0
    assert level["items_per_s"] == pytest.approx(level["requests_per_s"] * items_per_request, rel=0.01)
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert level["error_count"] == 0 and level["errors"] == {}
    assert level["windows"]["requests_per_s"] and isinstance(level["stable"], bool)
    assert level["client_cpu"] > 0


def test_sweep_reports_sane_numbers_and_the_server_side_breakdown(server: ServerProcess, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = bench("--url", server.url, "--model", MODEL, "--concurrency", "1,4", *SHORT, "--json", str(out),
                 "--server-pid", str(server.process.pid))
    assert code == 0
    document = json.loads(out.read_text())
    assert [level["concurrency"] for level in document["levels"]] == [1, 4]
    assert document["request"] == f"input FP32[1, 1, {SIZE}, {SIZE}]"
    assert document["server_statistics"]["available"] is True
    for level in document["levels"]:
        assert_sane(level)
        breakdown = level["server"]
        assert breakdown["requests"] > 0 and breakdown["inferences"] >= breakdown["executions"] > 0
        assert breakdown["avg_batch_size"] >= 1
        for key in ("avg_queue_ms", "avg_compute_input_ms", "avg_compute_infer_ms", "avg_compute_output_ms"):
            assert breakdown[key] is not None and breakdown[key] >= 0
        assert level["server_cpu"] is not None and level["server_cpu"] >= 0
        assert level["server_rss_mb"] > 0
    table = capsys.readouterr().out
    assert "req/s" in table and "queue ms" in table and "server cpu" in table


def test_stream_batches_and_proto_codec(server: ServerProcess, tmp_path: Path) -> None:
    for extra in (["--api", "stream", "--batch-size", "2"], ["--codec", "proto", "--channels", "2"]):
        out = tmp_path / "run.json"
        assert bench("--url", server.url, "--model", MODEL, "--concurrency", "4", *SHORT, "--json", str(out),
                     *extra) == 0
        document = json.loads(out.read_text())
        assert_sane(document["levels"][0], document["items_per_request"])


def test_classify_with_a_random_image_and_with_a_file(server: ServerProcess, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.new("L", (20, 20), 255).save(image)
    for extra in (["--api", "classify"], ["--api", "classify-stream", "--input", str(image), "--batch-size", "3"]):
        out = tmp_path / "classify.json"
        assert bench("--url", server.url, "--model", MODEL, "--concurrency", "2", *SHORT, "--json", str(out),
                     *extra) == 0
        assert_sane(json.loads(out.read_text())["levels"][0], 3 if "3" in extra else 1)


def test_failed_requests_are_counted_by_code(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    code = bench("--url", server.url, "--model", MODEL, "--concurrency", "2", *SHORT, "--json", str(out),
                 "--shape", "input:1,1,3,3")
    assert code == 1
    level = json.loads(out.read_text())["levels"][0]
    assert level["requests"] == 0 and set(level["errors"]) == {"INVALID_ARGUMENT"} and level["error_count"] > 0


def test_unknown_model_is_a_setup_error(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--url", server.url, "--model", "nope", "--wait", "0", *SHORT) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_plot_is_written(server: ServerProcess, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "chart.png"
    assert bench("--url", server.url, "--model", MODEL, "--concurrency", "1,2", "--duration", "0.3",
                 "--warmup", "0.1", "--no-progress", "--plot", str(chart)) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_raw_onnx_runtime_reports_a_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = conv_classifier_model(tmp_path / "repo" / MODEL / "1" / "model.onnx", size=SIZE)
    out = tmp_path / "raw.json"
    assert bench("--raw", str(model.parent.parent), "--batch-sizes", "1,4", "--duration", "0.2", "--warmup", "0.05",
                 "--json", str(out)) == 0
    document = json.loads(out.read_text())
    assert [r["batch_size"] for r in document["results"]] == [1, 4]
    assert all(r["items_per_s"] > 0 and r["runs"] >= 3 for r in document["results"])
    assert document["best"]["items_per_s"] == max(r["items_per_s"] for r in document["results"])
    assert document["intra_op_threads"] >= 1 and document["allow_spinning"] is False
    assert "ceiling" in capsys.readouterr().out


def test_stability_rule_is_perf_analyzers() -> None:
    assert is_stable([50.0, 100.0, 105.0, 95.0])
    assert not is_stable([100.0, 100.0, 130.0])
    assert not is_stable([100.0, 100.0])
    assert not is_stable([0.0, 0.0, 0.0])


def test_statistics_delta_gives_per_request_averages() -> None:
    def response(requests: int, executions: int, queue_ns: int) -> pb.ModelStatisticsResponse:
        answer = pb.ModelStatisticsResponse()
        stats = answer.model_stats.add(name=MODEL, version="1", inference_count=requests, execution_count=executions)
        stats.inference_stats.success.count = stats.inference_stats.queue.count = requests
        stats.inference_stats.queue.ns = queue_ns
        return answer

    before = ModelCounters.from_response(response(10, 5, 1_000_000))
    after = ModelCounters.from_response(response(110, 30, 51_000_000))
    breakdown = after.minus(before).breakdown()
    assert breakdown["requests"] == 100 and breakdown["avg_batch_size"] == 4.0
    assert breakdown["avg_queue_ms"] == pytest.approx(0.5)
    assert breakdown["avg_compute_infer_ms"] is None
