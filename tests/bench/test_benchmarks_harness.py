"""The benchmark-report harness (benchmarks/): the models it serves, and that it runs as a module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from onnx_serve.bench.raw import latest_model_file

from benchmarks.models import peer_models, repository_variant
from tests.helpers.serving import ROOT, add_model


def model_with_versions(directory: Path, *versions: int) -> Path:
    for version in versions:
        add_model(directory / str(version) / "model.onnx")
    (directory / "config.yaml").write_text("max_batch_size: 8\n")
    return directory


def test_the_latest_version_is_the_highest_number_not_the_last_string(tmp_path: Path) -> None:
    source = model_with_versions(tmp_path / "add", 2, 9, 10)
    (source / "notes").mkdir()
    assert latest_model_file(source) == source / "10" / "model.onnx"
    assert latest_model_file(tmp_path / "add" / "notes") is None

    repository = repository_variant(source, tmp_path / "work", "add-batching-off", "add", batching=False)
    served = repository / "add" / "1" / "model.onnx"
    assert served.resolve() == (source / "10" / "model.onnx").resolve()
    assert "dynamic_batching: false" in (repository / "add" / "config.yaml").read_text()

    peers = peer_models(tmp_path / "work", {"add": source})
    assert (peers / "add.onnx").resolve() == (source / "10" / "model.onnx").resolve()


def test_the_harness_runs_as_a_module() -> None:
    completed = subprocess.run([sys.executable, "-m", "benchmarks.run", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "python -m benchmarks.run" in completed.stdout


def test_the_entry_point_script_runs_the_harness() -> None:
    completed = subprocess.run([sys.executable, "scripts/run_benchmarks.py", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "--quick" in completed.stdout and "--with-kserve" in completed.stdout
