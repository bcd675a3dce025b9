"""The drain at SIGTERM, against real server processes: nothing that reached the server is lost, later calls get
UNAVAILABLE only (never CANCELLED), health goes NOT_SERVING first, and the process exits within
drain delay + grace period + 1 s whatever a client does (a Health Watch that never reads, a call that never ends).

The 10-run acceptance figure: python -m tests.system.drain_load --runs 10 --clients 16 [--workers 2]
"""

from __future__ import annotations

import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.settings
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers.serving import add_model, spin_model, start_server
from tests.system.drain_load import sigterm_under_load

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_16_closed_loop_clients_loses_nothing(workers: int) -> None:
    outcome, server = sigterm_under_load("--workers", str(workers), "--drain-delay", "0.5", "--grace-period", "10",
                                         "--access-log", clients=16)
    assert outcome.exit_code == 0, server.log()[-3000:]
    assert outcome.before["OK"] > 0 and outcome.lost == 0, outcome
    assert not outcome.unexpected_after, outcome  # only OK (during the drain delay) and UNAVAILABLE
    assert outcome.after["OK"] > 0 and outcome.after["UNAVAILABLE"] > 0, outcome
    # Every call a client saw answered OK was served and logged by the server: none vanished.
    served = len(re.findall(r"model=mnist-cnn .*code=OK", server.log()))
    assert served == outcome.before["OK"] + outcome.after["OK"]
    assert "Traceback" not in server.log()


def _infer_add(url: str) -> None:
    with tc.InferenceServerClient(url) as client:
        inputs = []
        for name in ("a", "b"):
            tensor = tc.InferInput(name, [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            inputs.append(tensor)
        client.infer("add", inputs)


def test_health_goes_not_serving_first_and_requests_are_served_during_the_drain_delay(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    server = start_server(tmp_path, "--drain-delay", "1.5", "--grace-period", "5")
    try:
        with grpc.insecure_channel(server.url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == SERVING
            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service="add")).status == NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service="liveness")).status == SERVING
            _infer_add(server.url)  # still answered: the endpoint is being removed, not gone
            watch.cancel()
        assert server.process.wait(timeout=10) == 0
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def _stalled_health_watch(port: int) -> socket.socket:
    """A raw HTTP/2 client that calls Health/Watch with a flow-control window of 0: it never accepts a byte of
    the answer (what a hostile or wedged client can do without any token)."""
    sock = socket.create_connection(("127.0.0.1", port))
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    stream = connection.get_next_available_stream_id()
    connection.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
                                     (":path", "/grpc.health.v1.Health/Watch"), ("content-type", "application/grpc"),
                                     ("te", "trailers")])
    message = health_pb2.HealthCheckRequest(service="").SerializeToString()
    connection.send_data(stream, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
    sock.sendall(connection.data_to_send())
    return sock


def test_a_health_watch_that_never_reads_stalls_neither_reload_nor_shutdown(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    server = start_server(tmp_path, "--drain-delay", "0.5", "--grace-period", "2")
    stalled = [_stalled_health_watch(server.grpc_port) for _ in range(3)]
    try:
        time.sleep(0.3)
        server.process.send_signal(signal.SIGHUP)  # publishes health on the way: must not wait for the watchers
        server.wait_for_line("reloading the model repository")
        _infer_add(server.url)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=10)
        took = time.monotonic() - signalled
        assert took < 0.5 + 2 + 1, f"exit took {took:.1f}s"
        assert code == 0, server.log()[-2000:]
    finally:
        for sock in stalled:
            sock.close()
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_a_call_that_outlasts_the_grace_period_does_not_hold_the_exit(tmp_path: Path) -> None:
    spin_model(tmp_path / "slow" / "1" / "model.onnx", milliseconds=6000)
    (tmp_path / "slow" / "config.yaml").write_text("dynamic_batching: false\n")
    server = start_server(tmp_path, "--drain-delay", "0.2", "--grace-period", "1")
    try:
        def infer_slow() -> str:
            with tc.InferenceServerClient(server.url) as client:
                x = tc.InferInput("x", [1, 2], "FP32")
                x.set_data_from_numpy(np.ones((1, 2), np.float32))
                try:
                    client.infer("slow", [x], client_timeout=20)
                    return "OK"
                except InferenceServerException as error:
                    return str(error.status())

        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(infer_slow)
            time.sleep(0.5)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=10)
            took = time.monotonic() - signalled
            assert took < 0.2 + 1 + 1, f"exit took {took:.1f}s"
            assert call.result(timeout=10) != "OK"  # cancelled at the end of the grace period: it could not finish
        assert "grace period over" in server.log()
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    server = start_server(tmp_path, "--drain-delay", "20", "--grace-period", "20")
    server.process.send_signal(signal.SIGINT)
    server.wait_for_line("draining")
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=10) == 1
    assert time.monotonic() - signalled < 5
    assert "second SIGINT" in server.log()
