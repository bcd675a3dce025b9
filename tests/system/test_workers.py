"""The --workers supervisor against real processes: a worker that dies (kill -9) or exits 0 unasked is restarted
on the same port while the other serves, counted on /metrics, which stays up; SIGHUP reaches every worker;
SIGTERM stops them all with exit 0; a worker that cannot start (exit 2 before it was ready) stops the server
with exit 2 instead of being restarted forever."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.helpers.metrics import samples, value
from tests.helpers.serving import ServerProcess, add_model, running_server, start_server

pytestmark = pytest.mark.timeout(60)
WORKERS = ("--workers", "2", "--grace-period", "5")
# A channel of its own per call: gRPC shares connections between channels to one address otherwise, and
# SO_REUSEPORT spreads connections, not calls, over the workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    add_model(tmp_path / "models" / "add" / "1" / "model.onnx")
    return tmp_path / "models"


class Traffic:
    """Two clients calling ModelInfer in a loop, each call on a new connection, and a scraper of /metrics; every
    outcome is recorded ("ok" or "STATUS: message")."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.outcomes: list[str] = []
        self.scrapes = 0
        self.scrape_failures: list[str] = []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._call) for _ in range(2)]
        self._threads.append(threading.Thread(target=self._scrape))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=20)

    def _call(self) -> None:
        inputs = [tc.InferInput(name, [1, 4], "FP32") for name in ("a", "b")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        while not self._done.is_set():
            try:
                with tc.InferenceServerClient(self.server.url, channel_args=OWN_CONNECTION) as client:
                    result = client.infer("add", inputs, client_timeout=10).as_numpy("sum")
                assert result is not None and result.tolist() == [[2.0] * 4]
                self.outcomes.append("ok")
            except InferenceServerException as exc:
                self.outcomes.append(f"{exc.status()}: {exc.message()}")
            self._done.wait(0.02)

    def _scrape(self) -> None:
        while not self._done.is_set():
            try:
                self.server.scrape()
                self.scrapes += 1
            except OSError as exc:
                self.scrape_failures.append(repr(exc))
            self._done.wait(0.1)

    def mark(self) -> int:
        return len(self.outcomes)

    def ok_since(self, mark: int) -> int:
        return self.outcomes[mark:].count("ok")

    def failures(self) -> list[str]:
        return [outcome for outcome in self.outcomes if outcome != "ok"]


def wait_until(condition: Callable[[], bool], what: str, server: ServerProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout}s; log:\n{server.log()}"
        time.sleep(0.02)


def count_lines(server: ServerProcess, pattern: str) -> int:
    return sum(1 for line in list(server.lines) if re.search(pattern, line))


def wait_ready(server: ServerProcess, index: int, times: int) -> None:
    """Until worker `index` has logged that it is ready `times` times (its first process, then restarts)."""
    wait_until(lambda: count_lines(server, rf"onnx_serve.server: worker {index} ready") >= times,
               f"worker {index} ready x{times}", server)


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """Each worker index's latest pid, from the supervisor's "worker N started/restarted (pid P)" lines."""
    pids = {}
    for line in list(server.lines):
        if match := re.search(r"worker (\d+) (?:started|restarted) \(pid (\d+)\)", line):
            pids[int(match.group(1))] = int(match.group(2))
    return pids


def restarts(server: ServerProcess) -> dict[str, float]:
    return {dict(labels)["worker"]: count for (name, labels), count in samples(server.scrape()).items()
            if name == "onnx_serve_worker_restarts_total"}


def assert_only_unavailable(failures: list[str]) -> None:
    assert all(failure.startswith("StatusCode.UNAVAILABLE") for failure in failures), failures


def test_a_killed_worker_is_restarted_while_the_other_serves(repository: Path) -> None:
    with running_server(repository, *WORKERS) as server:
        first = worker_pids(server)
        with Traffic(server) as traffic:
            wait_until(lambda: traffic.ok_since(0) >= 5, "calls", server)
            assert restarts(server) == {"0": 0, "1": 0}

            killed = traffic.mark()
            os.kill(first[1], signal.SIGKILL)
            server.wait_for_line(rf"worker 1 \(pid {first[1]}\) was killed by SIGKILL: restarting it in 0\.5s")
            wait_ready(server, 1, times=2)
            assert traffic.ok_since(killed) > 0  # worker 0 served meanwhile
            assert worker_pids(server)[1] != first[1]
            assert restarts(server) == {"0": 0, "1": 1}

            # With the first worker 0 killed too, the new worker 1 is the only process listening until worker
            # 0's replacement starts: the calls that succeed in that window are the new worker 1's.
            killed = traffic.mark()
            os.kill(first[0], signal.SIGKILL)
            server.wait_for_line(rf"worker 0 \(pid {first[0]}\) was killed by SIGKILL: restarting it in 0\.5s")
            server.wait_for_line(r"worker 0 restarted")
            assert traffic.ok_since(killed) > 0
            wait_ready(server, 0, times=2)
            assert restarts(server) == {"0": 1, "1": 1}
        assert_only_unavailable(traffic.failures())
        assert traffic.scrapes > 0 and traffic.scrape_failures == []  # /metrics stayed up throughout
        text = server.scrape()
        # The dead workers' counters stay in the aggregate; their live gauges (a call in flight) do not.
        answered = traffic.outcomes.count("ok")
        counted = value(text, "onnx_serve_requests_total", model="add", code="OK")
        assert answered <= counted <= answered + len(traffic.failures())
        assert value(text, "onnx_serve_inflight_requests") == 0
        assert value(text, "onnx_serve_model_ready", model="add") == 1
        assert server.stop() == 0


def test_a_worker_that_exits_0_unasked_is_restarted_and_sigterm_stops_them_all(repository: Path) -> None:
    with running_server(repository, *WORKERS) as server:
        first = worker_pids(server)
        with Traffic(server) as traffic:
            wait_until(lambda: traffic.ok_since(0) >= 5, "calls", server)
            asked_to_stop = traffic.mark()
            os.kill(first[0], signal.SIGTERM)  # the worker alone drains and exits 0
            server.wait_for_line(rf"worker 0 \(pid {first[0]}\) exited with code 0 unasked: restarting it in 0\.5s")
            wait_ready(server, 0, times=2)
            assert traffic.ok_since(asked_to_stop) > 0
        assert_only_unavailable(traffic.failures())
        assert restarts(server) == {"0": 1, "1": 0}

        # SIGHUP reaches every worker, the restarted one too: each loads the new model once.
        add_model(repository / "other" / "1" / "model.onnx")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: value(server.scrape(), "onnx_serve_model_load_duration_seconds_count",
                                 model="other") == 2, "both workers loading 'other'", server)

        pids = set(worker_pids(server).values()) | set(first.values())
        assert server.stop(signal.SIGTERM) == 0
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert count_lines(server, r"onnx_serve.server: stopped") == 3  # the first worker 0, then both drained
    assert "Traceback" not in server.log() and count_lines(server, r"restarted \(pid") == 1


def test_ctrl_c_drains_each_worker_once_and_exits_0(repository: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group: only the supervisor may get it, or
    each worker would take the supervisor's copy as a second signal and skip its drain."""
    server = start_server(repository, *WORKERS, new_session=True)  # its own group, as in a terminal
    try:
        os.killpg(server.pid, signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    assert count_lines(server, r"onnx_serve.server: stopped") == 2
    assert "second SIGINT" not in server.log() and "Traceback" not in server.log()


def test_a_worker_that_cannot_start_stops_the_server_with_exit_2(repository: Path) -> None:
    server = start_server(repository, *WORKERS)
    try:
        first = worker_pids(server)
        os.kill(first[1], signal.SIGKILL)
        server.wait_for_line(r"worker 1 restarted")
        second = worker_pids(server)[1]
        os.kill(second, signal.SIGKILL)  # still starting: a death, not a start-up mistake, so it is restarted
        server.wait_for_line(rf"worker 1 \(pid {second}\) was killed by SIGKILL: restarting it in 1\.0s")
        repository.rename(repository.with_name("moved"))  # the next worker 1 finds no repository
        assert server.process.wait(timeout=30) == 2
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    log = server.log()
    assert "no such directory" in log
    assert re.search(r"worker 1 \(pid \d+\) exited with code 2 before it was ready .*: stopping the server", log)
    assert count_lines(server, r"restarted \(pid") == 2  # not restarted again
    assert count_lines(server, r"onnx_serve.server: stopped") == 1  # worker 0 drained
    assert "Traceback" not in log
    assert not Path(f"/proc/{first[0]}").exists()


def test_workers_share_one_http_port_too(repository: Path) -> None:
    with running_server(repository, *WORKERS, "--http-port", "0") as server:
        assert server.http_port, server.log()
        for _ in range(20):  # a new connection each time: SO_REUSEPORT spreads them over both workers
            with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as response:
                assert response.status == 200
        assert len(re.findall(r"http listening on", server.log())) == 1  # the supervisor's, for the shared port
