"""examples/node/classify.js, as its README line runs it (`node examples/node/classify.js HOST:PORT IMAGE...`
after `npm install` there), classifies the example digits on a real server, and reports a bad file alone."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, in_process_server
from tests.helpers.serving import BUNDLED_MODELS, ROOT

EXAMPLE = ROOT / "examples" / "node"
DIGITS = sorted((ROOT / "examples" / "digits").glob("*.png"))

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Node.js 18 or newer)"),
    pytest.mark.skipif(not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(),
                       reason="needs `npm ci` (or `npm install`) in examples/node"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[InProcessServer]:
    with in_process_server(BUNDLED_MODELS, execution_providers=CPU_ONLY, metrics_port=-1, http_port=-1) as running:
        yield running


def node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", "examples/node/classify.js", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_the_node_example_classifies_the_digits(server: InProcessServer) -> None:
    result = node(server.url, *(str(path.relative_to(ROOT)) for path in DIGITS))
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    tops = {line: lines[i + 1].split() for i, line in enumerate(lines) if not line.startswith(" ")}
    assert set(tops) == {str(path.relative_to(ROOT)) for path in DIGITS}
    for image, (score, index, label) in tops.items():
        assert label == index == image.rsplit("/", 1)[1][0], image  # the file name is the digit
        assert 0.5 < float(score) <= 1.0
    assert sum(not line.startswith(" ") for line in lines) * 6 == len(lines)  # top 5 (the model's top_k) each


def test_a_bad_file_fails_alone_and_an_unreachable_server_is_exit_2(server: InProcessServer) -> None:
    result = node(server.url, "README.md", "examples/digits/7.png")
    assert result.returncode == 1 and result.stdout.startswith("examples/digits/7.png\n")
    assert result.stderr.startswith("README.md: ") and result.stderr.endswith("(INVALID_ARGUMENT)\n")
    gone = node("127.0.0.1:1", "examples/digits/7.png")
    assert gone.returncode == 2 and gone.stderr.endswith("(UNAVAILABLE)\n"), gone.stderr
