"""Start-up mistakes an operator makes, against real `onnx-serve serve` processes: each gives one line naming
the problem and exit status 2, with nothing left listening and no traceback; an empty repository starts and
says so."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.serving import ROOT, add_model, running_server


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnx_serve", "serve", "--host", "127.0.0.1", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    add_model(tmp_path / "models" / "add" / "1" / "model.onnx")
    return tmp_path / "models"


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert all(word in lines[0] for word in words), lines


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_repository_is_one_line_and_exit_2(tmp_path: Path, workers: str) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line(serve("--model-repository", str(missing), "--grpc-port", "0", "--metrics-port", "0",
                          "--workers", workers), str(missing), "no such directory")


def test_a_file_as_the_repository_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("not a directory")
    assert_one_line(serve("--model-repository", str(tmp_path / "models"), "--grpc-port", "0",
                          "--metrics-port", "0"), "not a directory")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_metrics_port_is_one_line_and_exit_2(repository: Path, busy_port: int, workers: str) -> None:
    result = serve("--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", str(busy_port),
                   "--workers", workers)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line or "error" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and f"cannot serve metrics on 127.0.0.1:{busy_port}" in lines[0], lines
    assert "grpc listening" not in result.stderr  # the gRPC port was never opened


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_grpc_port_is_one_line_and_exit_2(repository: Path, busy_port: int, workers: str) -> None:
    result = serve("--model-repository", str(repository), "--grpc-port", str(busy_port), "--metrics-port", "0",
                   "--workers", workers)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{busy_port}" in errors[0], errors


def test_an_empty_repository_starts_and_says_no_models_were_found(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        line = server.wait_for_line("no models found")
    assert str(tmp_path) in line and "not every model is ready" not in server.log()
