"""`onnx-serve bench` against a server that goes away mid-run (issue #17): it stops with "server unavailable" and
exit status 3 within seconds (15 s at most here), instead of spinning on refused connections for the rest of the
run. Both drivers, each against its own real server, killed with SIGKILL while the bench (a real `onnx-serve
bench` process) runs a 60 s level."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from onnx_serve.protos.inference import grpc_service_pb2 as pb

from tests.helpers.serving import conv_classifier_model, start_server

MODEL = "tiny"
EXIT_SERVER_GONE = 3


def served_requests(url: str) -> int:
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                                   request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                                   response_deserializer=pb.ModelStatisticsResponse.FromString)
        answer = call(pb.ModelStatisticsRequest(name=MODEL), timeout=5)
    return sum(s.inference_stats.success.count for s in answer.model_stats)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", ["python", "h2load"])
def test_bench_stops_when_the_server_goes_away(driver: str, tmp_path: Path) -> None:
    if driver == "h2load" and shutil.which("h2load") is None:
        pytest.skip("h2load is not installed (Debian package nghttp2-client)")
    conv_classifier_model(tmp_path / MODEL / "1" / "model.onnx")
    server = start_server(tmp_path, "--execution-providers", "cpu")
    bench = subprocess.Popen(
        [sys.executable, "-m", "onnx_serve", "bench", "--driver", driver, "--url", server.url, "--model", MODEL,
         "--concurrency", "8", "--duration", "60", "--warmup", "0.2", "--window", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while served_requests(server.url) < 20:  # the level is under way
            assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()
            time.sleep(0.1)
        server.stop(signal.SIGKILL)
        _, err = bench.communicate(timeout=15)  # without the watchdog: the whole 60 s level, spinning
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    assert bench.returncode == EXIT_SERVER_GONE, err
    assert "server unavailable" in err and "ServerLive fails" in err, err
