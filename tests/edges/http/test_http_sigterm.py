"""SIGTERM under HTTP load, on a real `onnx-serve` process: every request sent before the signal ends 200, the
ones after it are answered (200 during the drain delay, then 503) or refused a connection, and the process
exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.serving import running_server, slow_model

CLIENTS = 4
LOAD_S = 1.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    slow_model(root / "slow" / "1" / "model.onnx", 150)
    return root


def closed_loop(port: int, stop: threading.Event, outcomes: list[tuple[float, int | str]]) -> None:
    """Sends one request after another on a keep-alive connection (reopened when the server closes it)."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                connection.request("POST", "/v2/models/slow/infer", body)
                response = connection.getresponse()
                response.read()
                outcomes.append((sent, response.status))
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                outcomes.append((sent, type(exc).__name__))
                connection.close()
                time.sleep(0.05)
    finally:
        connection.close()


def test_sigterm_under_http_load_loses_nothing(repository: Path) -> None:
    with running_server(repository, "--execution-providers", "cpu", "--drain-delay", "1",
                        "--grace-period", "5") as server:
        assert server.http_port
        stop = threading.Event()
        outcomes: list[list[tuple[float, int | str]]] = [[] for _ in range(CLIENTS)]
        threads = [threading.Thread(target=closed_loop, args=(server.http_port, stop, mine), daemon=True)
                   for mine in outcomes]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_S)
        signalled = time.monotonic()
        exit_code = server.stop(signal.SIGTERM, timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert exit_code == 0, server.log()
    every = [outcome for mine in outcomes for outcome in mine]
    before = [status for sent, status in every if sent < signalled]
    after = [status for sent, status in every if sent >= signalled]
    assert before and all(status == 200 for status in before), before
    assert all(status in (200, 503) or isinstance(status, str) for status in after), after
