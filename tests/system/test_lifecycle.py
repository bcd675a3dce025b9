"""Process lifecycle against a real server: graceful shutdown with requests in flight, health during the
drain, SIGHUP reload, and reloading a model under load without failing a request."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers.serving import add_model, running_server, slow_model, start_server


def infer_slow(url: str, value: float = 1.0) -> np.ndarray:
    with tc.InferenceServerClient(url) as client:
        x = tc.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.full((1, 2), value, np.float32))
        return client.infer("slow", [x]).as_numpy("y")


def infer_add(client: tc.InferenceServerClient, model: str = "add") -> tc.InferResult:
    a = tc.InferInput("a", [1, 4], "FP32")
    a.set_data_from_numpy(np.ones((1, 4), np.float32))
    b = tc.InferInput("b", [1, 4], "FP32")
    b.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer(model, [a, b])


@pytest.fixture
def slow_repo(tmp_path: Path) -> Path:
    slow_model(tmp_path / "slow" / "1" / "model.onnx", milliseconds=150)
    (tmp_path / "slow" / "config.yaml").write_text("dynamic_batching: false\ninstance_group: {count: 2}\n")
    return tmp_path


def test_sigterm_finishes_in_flight_requests_and_exits_0(slow_repo: Path) -> None:
    server = start_server(slow_repo, "--grace-period", "20")
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(infer_slow, server.url, float(i)) for i in range(8)]
            time.sleep(0.3)  # all eight sent; two run, six queue
            server.process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=30) for f in futures]
        assert len(results) == 8 and all(r.shape == (1, 2) for r in results)
        assert server.process.wait(timeout=30) == 0
        assert "draining" in server.log() and "Traceback" not in server.log()
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_drain_refuses_new_work_and_reports_not_serving(slow_repo: Path) -> None:
    server = start_server(slow_repo, "--grace-period", "20")
    try:
        channel = grpc.insecure_channel(server.url)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(infer_slow, server.url) for _ in range(6)]
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            time.sleep(0.1)
            with pytest.raises(InferenceServerException) as refused:
                infer_slow(server.url)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            assert all(f.result(timeout=30).shape == (1, 2) for f in futures)
        channel.close()
        assert server.process.wait(timeout=30) == 0
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_sigint_also_drains_and_exits_0(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    server = start_server(tmp_path)
    assert server.stop(signal.SIGINT) == 0


def test_sighup_reloads_the_repository(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with running_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        assert client.get_model_metadata("add").versions == ["1"]
        shutil.copytree(tmp_path / "add" / "1", tmp_path / "add" / "2")
        add_model(tmp_path / "other" / "1" / "model.onnx")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if client.is_model_ready("other") and client.get_model_metadata("add").versions == ["2"]:
                break
            time.sleep(0.1)
        assert client.get_model_metadata("add").versions == ["2"]
        assert infer_add(client).get_response().model_version == "2"
        assert infer_add(client, "other").as_numpy("sum").tolist() == [[2.0] * 4]


def test_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with running_server(tmp_path) as server:
        stop = threading.Event()
        outcomes: list[str] = []

        def hammer() -> None:
            with tc.InferenceServerClient(server.url) as client:
                while not stop.is_set():
                    try:
                        infer_add(client)
                        outcomes.append("ok")
                    except InferenceServerException as exc:
                        outcomes.append(f"{exc.status()}: {exc.message()}")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        with tc.InferenceServerClient(server.url) as admin:
            for version in range(2, 6):
                shutil.copytree(tmp_path / "add" / "1", tmp_path / "add" / str(version))
                admin.load_model("add")
                assert admin.get_model_metadata("add").versions == [str(version)]
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        failures = [o for o in outcomes if o != "ok"]
        assert outcomes.count("ok") > 20
        assert failures == []


def test_json_logs_carry_the_request_id_on_error_lines(tmp_path: Path) -> None:
    import json

    add_model(tmp_path / "add" / "1" / "model.onnx")
    with running_server(tmp_path, "--log-format", "json", "--log-level", "debug", "--access-log") as server, \
            tc.InferenceServerClient(server.url) as client:
        a = tc.InferInput("a", [1, 5], "FP32")
        a.set_data_from_numpy(np.ones((1, 5), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("add", [a, a], request_id="req-42")
        infer_add(client)
        server.wait_for_line('"code": "OK"')
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert entries and len(entries) == len([line for line in server.lines if line.strip()])
    failure = [e for e in entries if e.get("request_id") == "req-42" and e["logger"] == "onnx_serve.requests"]
    assert failure and failure[0]["code"] == "INVALID_ARGUMENT" and failure[0]["level"] == "debug"
    access = [e for e in entries if e["logger"] == "onnx_serve.access"]
    assert {e["code"] for e in access} == {"INVALID_ARGUMENT", "OK"}
    assert all(e["api"] == "infer" and e["model"] == "add" and e["ms"] >= 0 for e in access)


def test_no_per_request_lines_at_info_by_default(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with running_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        before = len(server.lines)
        for _ in range(20):
            infer_add(client)
        a = tc.InferInput("a", [1, 5], "FP32")
        a.set_data_from_numpy(np.ones((1, 5), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("add", [a, a])
        time.sleep(0.2)
        assert len(server.lines) == before
