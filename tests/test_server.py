"""onnx_serve.Server used wrongly from Python: a failed start raises the start-up mistake and leaves no
thread, loop or port behind; call() outside `with` says how to use it; a stopped server can be started
anew on the same repository."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from onnx_serve import Server, Settings
from onnx_serve.core.settings import SettingError
from onnx_serve.edges.grpc import PortUnavailable

from tests.helpers.serving import add_model

LOCAL = Settings(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0, drain_delay_s=0,
                 execution_providers=("CPUExecutionProvider",))


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "onnx-serve"]


def test_a_missing_repository_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="no such directory"), Server(tmp_path / "nowhere", LOCAL):
        pass
    assert server_threads() == []


def test_a_busy_port_raises_and_leaves_nothing_listening(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        settings = Settings(host="127.0.0.1", grpc_port=busy, http_port=0, metrics_port=0)
        with pytest.raises(PortUnavailable, match=f"127.0.0.1:{busy}"), Server(tmp_path, settings):
            pass
    assert server_threads() == []


def test_call_outside_with_says_how_to_use_it(tmp_path: Path) -> None:
    server = Server(tmp_path, LOCAL)
    coroutine = server.data_plane.infer("add", "", {})
    with pytest.raises(RuntimeError, match="use `with Server"):
        server.call(coroutine)
    coroutine.close()


def test_a_server_starts_again_after_it_stopped(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    for _ in range(2):
        with Server(tmp_path, LOCAL) as server:
            assert server.data_plane.ready() and server.grpc_port > 0
    assert server_threads() == []
