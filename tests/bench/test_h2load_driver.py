"""`onnx-serve bench --driver h2load` against a real server on 127.0.0.1: nghttp2's h2load posts the request, and
the server's ModelStatistics vouch for its successes. Only sane numbers and counts are asserted, never timings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from onnx_serve.bench.h2load import H2loadResult, Point, grpc_frame, parse_points, read_log
from onnx_serve.cli import main
from onnx_serve.protos.inference import grpc_service_pb2 as pb

from tests.helpers.serving import ServerProcess, conv_classifier_model, running_server

MODEL = "tiny"
SIZE = 8
CONFIG = "max_batch_size: 16\ndynamic_batching: {max_queue_delay_microseconds: 200}\n"
SHORT = ["--duration", "1.5", "--warmup", "0.3", "--window", "0.5", "--no-progress"]
needs_h2load = pytest.mark.skipif(shutil.which("h2load") is None,
                                  reason="h2load is not installed (Debian package nghttp2-client)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("h2load-repo")
    conv_classifier_model(repository / MODEL / "1" / "model.onnx", size=SIZE)
    (repository / MODEL / "config.yaml").write_text(CONFIG)
    with running_server(repository, "--execution-providers", "cpu") as process:
        yield process


def successes(url: str) -> tuple[int, int]:
    """The model's successful and failed requests so far, by the server's own count."""
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                                   request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                                   response_deserializer=pb.ModelStatisticsResponse.FromString)
        answer = call(pb.ModelStatisticsRequest(name=MODEL), timeout=10)
    stats = [s.inference_stats for s in answer.model_stats]
    return sum(s.success.count for s in stats), sum(s.fail.count for s in stats)


@needs_h2load
def test_a_short_run_is_counted_by_the_server_too(server: ServerProcess, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "h2load.json"
    code = main(["bench", "--driver", "h2load", "--url", server.url, "--model", MODEL, "--points", "1x4", *SHORT,
                 "--json", str(out), "--server-pid", str(server.pid)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["driver"] == "h2load" and document["points"] == ["1x4"]
    assert document["h2load"]["body_bytes"] == document["request_bytes"] + 5  # one length-prefixed message
    [level] = document["levels"]
    assert (level["driver"], level["point"], level["connections"], level["streams"]) == ("h2load", "1x4", 1, 4)
    assert level["concurrency"] == 4 and level["requests"] > 0 and level["requests_per_s"] > 0
    assert level["error_count"] == 0 and level["errors"] == {}
    latency = level["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    completed = level["h2load"]["requests"]["succeeded"]
    assert completed == level["requests"] == level["h2load"]["status_codes"]["2xx"]
    # The server counted every answer h2load got as a success; at most the 4 abandoned in flight at the end more.
    assert completed <= level["server"]["requests"] <= completed + 4
    assert level["server"]["avg_batch_size"] >= 1
    assert level["server_cpu_us_per_request"] > 0 and level["server_rss_mb"] > 0 and level["client_cpu"] >= 0
    table = capsys.readouterr().out
    assert "1x4" in table and "batch" in table


@needs_h2load
def test_concurrency_means_one_connection_with_that_many_streams(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "h2load.json"
    assert main(["bench", "--driver", "h2load", "--url", server.url, "--model", MODEL, "--concurrency", "2",
                 "--duration", "0.6", "--warmup", "0", "--window", "0.2", "--no-progress", "--json", str(out)]) == 0
    [level] = json.loads(out.read_text())["levels"]
    assert (level["point"], level["connections"], level["streams"]) == ("1x2", 1, 2)
    assert level["requests"] > 0 and level["error_count"] == 0


@needs_h2load
def test_a_refused_request_is_caught_before_any_load(server: ServerProcess,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = successes(server.url)
    code = main(["bench", "--driver", "h2load", "--url", server.url, "--model", MODEL, "--points", "1x4", *SHORT,
                 "--shape", "input:1,1,3,3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "h2load counts a gRPC error as an HTTP 200" in err
    succeeded, failed = successes(server.url)
    assert succeeded == before[0] and failed - before[1] <= 1  # the one check, no load


@pytest.mark.parametrize("where", ["option", "path"])
def test_missing_h2load_names_the_debian_package(where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["bench", "--driver", "h2load", "--url", "127.0.0.1:1", "--model", MODEL, "--wait", "0"]
    if where == "option":
        arguments += ["--h2load", str(tmp_path / "no-such-h2load")]
    else:
        monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no h2load on PATH
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert "h2load not found" in err and "nghttp2-client" in err


def test_points_and_frames() -> None:
    assert parse_points("4x32, 1X8") == [Point(4, 32), Point(1, 8)]
    assert Point(4, 32).in_flight == 128 and Point(4, 32).label == "4x32"
    for bad in ("4", "0x8", "4x", "ax2"):
        with pytest.raises(Exception, match="CONNECTIONSxSTREAMS"):
            parse_points(bad)
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_h2load_output_and_log_are_read(tmp_path: Path) -> None:
    stdout = """finished in 2.00s, 1034.00 req/s, 145.97KB/s
requests: 2068 total, 2072 started, 2068 done, 2060 succeeded, 8 failed, 3 errored, 0 timeout
status codes: 2060 2xx, 0 3xx, 5 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:     1.73ms     24.45ms      3.84ms      1.61ms    85.06%
time for connect:       73us        73us        73us         0us   100.00%
"""
    result = H2loadResult.parse(0, stdout, "")
    assert result.finished_s == 2.0 and result.requests["succeeded"] == 2060 and result.requests["failed"] == 8
    assert result.status_codes["4xx"] == 5
    assert result.request_time_ms == {"min": 1.73, "max": 24.45, "mean": 3.84, "sd": 1.61}
    log = tmp_path / "log.tsv"
    start = 1_700_000_000_000_000
    log.write_text(f"{start}\t200\t100000\n{start + 10}\t-1\t5\n{start + 500_000}\t200\t400000\n"
                   f"{start + 900_000}\t200\t2000000\n")
    latencies, counts = read_log(log, 0.5, 2)
    assert latencies == [0.1, 0.4, 2.0] and counts == [1, 1]  # the last one ends after the two windows
