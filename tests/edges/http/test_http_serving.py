"""The HTTP edge inside the server: it starts beside gRPC (a busy port is PortUnavailable and leaves nothing
listening), -1 turns it off, and a stop drains it: readiness goes 503, answers say Connection: close, requests
that reached the server finish 200, and then the port is closed."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from pathlib import Path

import pytest
from onnx_serve import Server, Settings
from onnx_serve.edges.grpc import PortUnavailable

from tests.helpers.inprocess import CPU_ONLY, in_process_server
from tests.helpers.serving import add_model, slow_model

SLOW_MS = 600


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")
    slow_model(root / "slow" / "1" / "model.onnx", SLOW_MS)
    return root


def local(**fields: object) -> Settings:
    base: dict[str, object] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": -1,
                               "execution_providers": CPU_ONLY, "drain_delay_s": 0.0, "grace_period_s": 5.0}
    return Settings(**{**base, **fields})


def free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_busy_http_port_raises_and_leaves_nothing_listening(repository: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        server = Server(repository, local(http_port=busy))
        with pytest.raises(PortUnavailable, match=f"127.0.0.1:{busy}"), server:
            pass
    assert server.grpc_port and free(server.grpc_port)  # the gRPC edge it had started was stopped


def test_minus_one_turns_http_off(repository: Path) -> None:
    with in_process_server(repository, execution_providers=CPU_ONLY, http_port=-1) as running:
        assert running.http_port == 0 and running.http_url == ""
        assert "http listening" not in running.log()


def test_the_log_names_the_http_port(repository: Path) -> None:
    with in_process_server(repository, execution_providers=CPU_ONLY) as running:
        assert f"http listening on 127.0.0.1:{running.http_port}" in running.log()


def slow_infer(port: int) -> tuple[int, str | None]:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v2/models/slow/infer", body)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Connection")
    finally:
        connection.close()


def get(port: int, path: str) -> tuple[int, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Connection")
    finally:
        connection.close()


def test_a_stop_drains_http(repository: Path) -> None:
    async def scenario() -> None:
        server = Server(repository, local(drain_delay_s=1.0))
        await server.start()
        port = server.http_port
        assert await asyncio.to_thread(get, port, "/v2/health/ready") == (200, None)
        in_flight = asyncio.gather(*(asyncio.to_thread(slow_infer, port) for _ in range(4)))
        await asyncio.sleep(0.2)  # sent; each takes SLOW_MS, and any still on its way lands in the drain delay
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(get, port, "/v2/health/ready") == (503, "close")
        assert await asyncio.to_thread(get, port, "/v2/health/live") == (200, "close")
        assert [status for status, _ in await in_flight] == [200] * 4
        await asyncio.wait_for(stopping, 30)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(get, port, "/v2/health/live")

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_request_still_running_after_the_grace_period_is_answered_503(repository: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        server = Server(repository, local(grace_period_s=0.1))
        await server.start()
        in_flight = asyncio.create_task(asyncio.to_thread(slow_infer, server.http_port))
        await asyncio.sleep(0.2)  # it runs for SLOW_MS
        await asyncio.wait_for(server.stop(), 30)
        assert await in_flight == (503, "close")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not [record.getMessage() for record in caplog.records if record.exc_info]  # no crash logged
