"""README.md's Python examples run as written: the in-process server serves the bundled model, our client
classifies a drawn digit through it, and the data plane answers numpy directly; and its curl examples run
against the HTTP edge."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.helpers.inprocess import CPU_ONLY, in_process_server
from tests.helpers.serving import BUNDLED_MODELS, ROOT


def python_block(section: str) -> str:
    """The first ```python block after the heading `section`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


def test_the_in_process_server_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").symlink_to(BUNDLED_MODELS, target_is_directory=True)
    digit = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(digit).line([(50, 15), (50, 85)], fill=0, width=9)  # a dark "1" on white paper
    digit.save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(python_block("In-process server"), "README.md", "exec"), {})
    first, second = printed.getvalue().split()
    assert first == "1"  # the label of the stroke
    assert second.isdigit()  # argmax of the model's answer to a blank batch


def bash_block(section: str) -> str:
    """The first ```bash block after the heading `section`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}")
    match = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no bash block under '## {section}'"
    return match.group(1)


def test_the_curl_examples_run(tmp_path: Path) -> None:
    digit = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(digit).line([(50, 15), (50, 85)], fill=0, width=9)
    digit.save(tmp_path / "digit.png")
    digit.convert("RGB").save(tmp_path / "other.jpg")
    with in_process_server(BUNDLED_MODELS, execution_providers=CPU_ONLY, metrics_port=-1) as server:
        script = bash_block("HTTP/REST with curl").replace("localhost:8000", f"127.0.0.1:{server.http_port}")
        # Each curl fails the script on an HTTP error, and ends its answer with a newline.
        wrapper = 'set -euo pipefail\ncurl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'
        result = subprocess.run(["bash", "-c", wrapper + script], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    ready, metadata, top3, several, inferred = [json.loads(line) for line in result.stdout.splitlines() if line]
    assert ready == {"ready": True} and metadata["name"] == "mnist-cnn"
    assert top3["results"][0]["predictions"][0]["label"] == "1"
    assert len(top3["results"][0]["predictions"]) == 3
    assert [r["predictions"][0]["label"] for r in several["results"]] == ["1", "1"]
    assert inferred["outputs"][0]["shape"] == [1, 10]
