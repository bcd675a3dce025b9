"""--max-connection-age: the server closes long-lived HTTP/2 connections (GOAWAY), clients reconnect without
a failed request, and so a new connection can land on a new replica after a scale-out. A TCP proxy in the
test counts the connections the client opens."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from tests.helpers.inprocess import in_process_server
from tests.helpers.serving import add_model


@contextmanager
def counting_proxy(target_port: int) -> Iterator[tuple[int, list[int]]]:
    """Forwards 127.0.0.1:<proxy port> to the target; yields the port and a one-item list: connections opened."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = [0]

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        with suppress(OSError):
            while True:
                client, _ = listener.accept()
                accepted[0] += 1
                upstream = socket.create_connection(("127.0.0.1", target_port))
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()


def add_inputs() -> list[tc.InferInput]:
    inputs = [tc.InferInput(name, [1, 4], "FP32") for name in ("a", "b")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return inputs


def test_connections_are_recycled_without_failing_requests(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path, max_connection_age_s=0.5, max_connection_age_grace_s=0.5) as server, \
            counting_proxy(server.grpc_port) as (port, accepted):
        inputs = add_inputs()
        failures, successes = [], 0
        with tc.InferenceServerClient(f"127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 2.4
            while time.monotonic() < deadline:
                try:
                    client.infer("add", inputs)
                    successes += 1
                except Exception as exc:  # any failure is what this test looks for
                    failures.append(str(exc))
                time.sleep(0.005)
        assert failures == []
        assert successes > 30
        assert accepted[0] >= 3  # one connection per ~0.5 s of age instead of one for the whole run


def test_without_an_age_one_connection_serves_everything(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path) as server, counting_proxy(server.grpc_port) as (port, accepted):
        inputs = add_inputs()
        with tc.InferenceServerClient(f"127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 1.2
            while time.monotonic() < deadline:
                client.infer("add", inputs)
        assert accepted[0] == 1


def test_round_robin_spreads_requests_over_replicas_by_their_metrics(tmp_path: Path) -> None:
    """Two servers, each with its own port and /metrics, as two pods behind a headless Service; our client with a
    round_robin target over both addresses. Each server's own /metrics shows it served about half of the
    requests."""
    from onnx_serve.client.client import Client

    from tests.helpers.metrics import value

    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path) as first, in_process_server(tmp_path) as second:
        target = f"ipv4:127.0.0.1:{first.grpc_port},127.0.0.1:{second.grpc_port}"
        with Client(target, timeout=10) as client:
            for _ in range(40):
                client.infer("add", {"a": np.zeros((1, 4), np.float32), "b": np.ones((1, 4), np.float32)})
        counts = [value(s.scrape(), "onnx_serve_requests_total", model="add", code="OK") for s in (first, second)]
    assert sum(counts) == 40
    assert min(counts) >= 15, counts  # round robin alternates once both connections are up
