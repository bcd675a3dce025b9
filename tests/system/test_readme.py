"""README.md's Python examples run as written: the in-process server serves the bundled model, our client
classifies a drawn digit through it, and the data plane answers numpy directly."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

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
