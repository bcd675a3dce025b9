"""`onnx-serve health` and `onnx-serve models` as a user (or Docker's HEALTHCHECK) runs them, in a subprocess,
against a real server: exit 0 only when SERVING, and the repository index with each model's state and reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, in_process_server
from tests.helpers.serving import ROOT, conv_classifier_model


def onnx_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnx_serve", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    root = tmp_path_factory.mktemp("healthy")
    conv_classifier_model(root / "good" / "1" / "model.onnx")
    with in_process_server(root, execution_providers=CPU_ONLY, metrics_port=-1, http_port=-1) as server:
        yield server


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """One model serving, one refused for an unknown config key."""
    root = tmp_path_factory.mktemp("degraded")
    conv_classifier_model(root / "good" / "1" / "model.onnx")
    conv_classifier_model(root / "broken" / "1" / "model.onnx")
    (root / "broken" / "config.yaml").write_text("max_batch_sise: 8\n")
    with in_process_server(root, execution_providers=CPU_ONLY, metrics_port=-1, http_port=-1) as server:
        yield server


def test_health_exits_0_when_serving(healthy: InProcessServer) -> None:
    for service in ([], ["--service", "liveness"], ["--service", "good"]):
        result = onnx_serve("health", "--url", healthy.url, *service)
        assert (result.returncode, result.stdout, result.stderr) == (0, "SERVING\n", ""), service


def test_health_exits_1_when_not_every_model_is_ready(degraded: InProcessServer) -> None:
    result = onnx_serve("health", "--url", degraded.url)
    assert (result.returncode, result.stdout) == (1, "NOT_SERVING\n")
    assert onnx_serve("health", "--url", degraded.url, "--service", "good").returncode == 0  # the one that serves


def test_health_of_an_unknown_service_or_server_is_one_line_and_exit_1(healthy: InProcessServer) -> None:
    unknown = onnx_serve("health", "--url", healthy.url, "--service", "nope")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == f"onnx-serve health: {healthy.url}: unknown service 'nope' (NOT_FOUND)\n"
    gone = onnx_serve("health", "--url", "127.0.0.1:1")
    assert (gone.returncode, gone.stdout) == (1, "")
    [line] = gone.stderr.splitlines()
    assert line.startswith("onnx-serve health: 127.0.0.1:1: ") and line.endswith("(UNAVAILABLE)"), line


def test_models_lists_each_state_and_reason(degraded: InProcessServer) -> None:
    table = onnx_serve("models", "--url", degraded.url)
    assert (table.returncode, table.stderr) == (0, "")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["model", "version", "state", "reason"]
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {"broken", "good"}
    assert by_name["good"].split() == ["good", "1", "READY"]
    assert by_name["broken"].split()[2] == "UNAVAILABLE" and "max_batch_sise" in by_name["broken"]
    assert by_name["broken"].index("UNAVAILABLE") == header.index("state")  # the columns line up

    lines = onnx_serve("models", "--url", degraded.url, "--json")
    assert lines.returncode == 0
    models = {entry["name"]: entry for entry in map(json.loads, lines.stdout.splitlines())}
    assert models["good"] == {"name": "good", "version": "1", "state": "READY", "reason": ""}
    assert models["broken"]["state"] == "UNAVAILABLE" and "max_batch_sise" in models["broken"]["reason"]


def test_models_of_an_unreachable_server_is_exit_2() -> None:
    result = onnx_serve("models", "--url", "127.0.0.1:1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("onnx-serve models: 127.0.0.1:1: ") and "Traceback" not in result.stderr


def test_help_names_both_commands() -> None:
    result = onnx_serve("--help")
    assert "health" in result.stdout and "models" in result.stdout



def test_serve_help_shows_each_default_once() -> None:
    """Each flag's help says its default once (it once read `(default: --host) (default: )`)."""
    result = onnx_serve("serve", "--help")
    assert result.returncode == 0
    entries = " ".join(result.stdout.split()).split(" --")
    assert [entry for entry in entries if entry.count("(default:") > 1] == []
    assert "(default: )" not in " ".join(result.stdout.split())
