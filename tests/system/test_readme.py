"""Every shell and Python block of README.md runs as written, against one real server (the in-process Server on
the bundled models, with ephemeral ports put where the README says 8000/8001/8002), from a directory laid out as
a clone (models/, examples/, .venv). A block that cannot run here is preceded by
`<!-- not run: <reason> -->` and is reported as skipped with that reason; a block that fails fails the build.
The blocks whose output says something checkable (labels of the example digits, health) are checked too."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, in_process_server
from tests.helpers.serving import BUNDLED_MODELS, ROOT

SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    heading: str
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason given, when marked

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}-{re.sub(r'[^a-z0-9]+', '-', self.heading.lower()).strip('-')}"


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    heading, lines = "", text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            heading = line[3:]
        fence = FENCE.match(line)
        if fence:
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = NOT_RUN.fullmatch(previous.strip())
            blocks.append(Block(heading, index + 1, fence.group(1), "\n".join(lines[index + 1:end]) + "\n",
                                marker.group(1) if marker else None))
            index = end
        index += 1
    return blocks


BLOCKS = [block for block in readme_blocks((ROOT / "README.md").read_text()) if block.language in SHELL | PYTHON]


def test_every_not_run_marker_gives_a_reason_and_stands_before_a_block() -> None:
    text = (ROOT / "README.md").read_text()
    marked = {block.line for block in readme_blocks(text) if block.not_run is not None}
    markers = [number for number, line in enumerate(text.splitlines(), start=1) if NOT_RUN.search(line)]
    assert len(markers) == len(marked), "a `<!-- not run: ... -->` marker that no code block follows"
    assert all(block.not_run for block in BLOCKS if block.not_run is not None), "a marker without a reason"
    assert len([block for block in BLOCKS if block.not_run is None]) >= 7  # the README's examples, not just a few


@pytest.fixture(scope="module")
def server() -> Iterator[InProcessServer]:
    with in_process_server(BUNDLED_MODELS, execution_providers=CPU_ONLY) as running:
        yield running


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory as a clone is: the blocks' relative paths (models/, examples/, .venv/bin) resolve."""
    directory = tmp_path_factory.mktemp("clone")
    for name in ("models", "examples", "protos"):
        (directory / name).symlink_to(ROOT / name, target_is_directory=True)
    (directory / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return directory


def on_ports(code: str, server: InProcessServer) -> str:
    """The block with the test server's ports where the README has the default ones."""
    for default, port in (("8000", server.http_port), ("8001", server.grpc_port), ("8002", server.metrics_port)):
        code = re.sub(rf"\b(localhost|127\.0\.0\.1):{default}\b", rf"127.0.0.1:{port}", code)
    return code


def run_shell(code: str, server: InProcessServer, cwd: Path) -> str:
    # Each curl fails the script on an HTTP error, and ends its answer with a newline.
    wrapper = 'set -euo pipefail\ncurl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'
    env = {**os.environ, "ONNX_SERVE_URL": server.url, "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", wrapper + code], cwd=cwd, capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{code}\n{result.stdout}{result.stderr}"
    return result.stdout


def run_python(code: str, cwd: Path) -> str:
    printed = io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(previous)
    return printed.getvalue()


def json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def check_classify_cli(output: str) -> None:
    table = "".join(line for line in output.splitlines(keepends=True) if not line.startswith("{"))
    lines = json_lines("".join(line for line in output.splitlines(keepends=True) if line.startswith("{")))
    assert table.startswith("examples/digits/7.png\n") and re.search(r"\n +1 +1\.000 +7 +7\n", table), table
    labels = {str(line["image"]): line["top"][0]["label"] for line in lines}  # type: ignore[index]
    assert labels == {f"examples/digits/{name}.png": name[0] for name in ("1", "3", "4", "7")}


def check_classify_python(output: str) -> None:
    assert output.split()[:2] == ["7", "1.0"], output  # label and score, best first


def check_curl(output: str) -> None:
    ready, metadata, top3, several, inferred = json_lines(output)
    assert ready == {"ready": True} and metadata["name"] == "mnist-cnn"
    [result] = top3["results"]  # type: ignore[misc]
    assert [p["label"] for p in result["predictions"]][:1] == ["7"] and len(result["predictions"]) == 3
    assert [r["predictions"][0]["label"] for r in several["results"]] == ["1", "4"]  # type: ignore[attr-defined]
    assert inferred["outputs"][0]["shape"] == [1, 10]  # type: ignore[index]


def check_health(output: str) -> None:
    serving, model_serving, header, *models = output.splitlines()
    assert (serving, model_serving) == ("SERVING", "SERVING")
    assert header.split() == ["model", "version", "state", "reason"]
    assert ["mnist-cnn", "1", "READY"] in [row.split() for row in models]


def check_other_languages(output: str) -> None:
    tops = [line for line in output.splitlines() if line.startswith(("examples/", "  "))]
    node_tops = {line: tops[i + 1].split()[-1] for i, line in enumerate(tops) if line.endswith(".png")}
    assert node_tops == {f"examples/digits/{name}.png": name[0] for name in ("1", "3", "4", "7")}
    curl_tops = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])["results"][0]["predictions"][0]["label"]
                 for line in output.splitlines() if line.startswith("examples/") and " {" in line}
    assert curl_tops == node_tops


def check_in_process(output: str) -> None:
    label, argmax = output.split()
    assert label == "7" and argmax.isdigit()


# What the blocks print, where it tells whether they did their job; keyed by heading and the block's first line.
CHECKS: dict[tuple[str, str], Callable[[str], None]] = {
    ("Classify an image", ".venv/bin/onnx-serve classify"): check_classify_cli,
    ("Classify an image", "from onnx_serve import Client"): check_classify_python,
    ("HTTP/REST with curl", "curl localhost:8000/v2/health/ready"): check_curl,
    ("Health and the model list", ".venv/bin/onnx-serve health"): check_health,
    ("From any language", "node examples/node/classify.js"): check_other_languages,
    ("In-process server", "import numpy as np"): check_in_process,
}


def check_for(block: Block) -> Callable[[str], None] | None:
    first = block.code.lstrip().splitlines()[0]
    return next((check for (heading, start), check in CHECKS.items()
                 if block.heading.startswith(heading) and first.startswith(start)), None)


def test_each_check_finds_its_block() -> None:
    found = {check_for(block) for block in BLOCKS}
    assert set(CHECKS.values()) <= found, "a README block that a check expects was changed or moved"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block_runs(block: Block, server: InProcessServer, clone: Path) -> None:
    if block.not_run is not None:
        pytest.skip(f"README.md line {block.line}: not run: {block.not_run}")
    if "node examples/node/" in block.code and not (ROOT / "examples/node/node_modules/@grpc/grpc-js").is_dir():
        pytest.skip("needs `npm ci` in examples/node (.ci/run runs it)")
    code = on_ports(block.code, server)
    output = run_shell(code, server, clone) if block.language in SHELL else run_python(code, clone)
    check = check_for(block)
    if check is not None:
        check(output)


# Every mapping of config.yaml's schema, as a config that puts an unknown key in it: the parser's error lists the
# keys that mapping accepts, so the test reads the schema from the parser itself.
SCHEMA_PROBES: dict[str, object] = {
    "": {"zz": 1},
    "dynamic_batching": {"dynamic_batching": {"zz": 1}},
    "dynamic_batching.default_queue_policy": {"dynamic_batching": {"default_queue_policy": {"zz": 1}}},
    "dynamic_batching.priority_queue_policy.*": {"dynamic_batching": {"priority_queue_policy": {1: {"zz": 1}}}},
    "instance_group": {"instance_group": {"zz": 1}},
    "session": {"session": {"zz": 1}},
    "preprocess": {"preprocess": {"zz": 1}},
    "postprocess": {"postprocess": {"zz": 1}},
    "limits": {"limits": {"zz": 1}},
    "model_warmup.*": {"model_warmup": [{"zz": 1}]},
    "model_warmup.*.inputs.*": {"model_warmup": [{"inputs": {"x": {"zz": 1}}}]},
}


def schema_keys(probe: object) -> set[str]:
    from onnx_serve.core.errors import ConfigError
    from onnx_serve.core.model_config import parse_model_config

    with pytest.raises(ConfigError) as raised:
        parse_model_config(probe, "config.yaml", "mnist-cnn")
    allowed = re.search(r"unknown key \(allowed: (.*)\)", str(raised.value))
    assert allowed, str(raised.value)
    return set(allowed.group(1).split(", "))


def documented_keys(tree: object, path: str, found: dict[str, set[str]]) -> None:
    """The keys of each mapping of the README's config examples, by path (list items, levels, names as `*`)."""
    if isinstance(tree, list):
        for item in tree:
            documented_keys(item, f"{path}.*" if path else "*", found)
    elif isinstance(tree, dict):
        found.setdefault(path, set()).update(map(str, tree))
        for key, value in tree.items():
            # Priority levels and warm-up input names are the user's, not keys of the schema.
            key_path = "*" if isinstance(key, int) or path.endswith("inputs") else str(key)
            documented_keys(value, f"{path}.{key_path}" if path else key_path, found)


def test_the_configuration_reference_documents_every_key_the_schema_accepts() -> None:
    import yaml

    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Model repository"):text.index("\n## Configuration reference")]
    found: dict[str, set[str]] = {}
    for block in readme_blocks(section):
        if block.language == "yaml":
            documented_keys(yaml.safe_load(block.code), "", found)
    for path, probe in SCHEMA_PROBES.items():
        assert found.get(path, set()) == schema_keys(probe), f"README's config.yaml reference, at '{path or '(top)'}'"
    # version_policy's three forms are one line: the example names one, its comment the other two.
    assert schema_keys({"version_policy": {"zz": 1}}) == {"latest", "all", "specific"}
    assert "version_policy: {latest: {num_versions: 1}}   # or {all: {}} or {specific: {versions: [1, 3]}}" in section


def test_the_example_digits_are_what_draw_py_makes(tmp_path: Path) -> None:
    """The committed examples/digits/*.png are drawn by examples/digits/draw.py (no dataset is copied in)."""

    subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "draw.py"), str(tmp_path)], check=True)
    committed = sorted(path.name for path in (ROOT / "examples" / "digits").glob("*.png"))
    assert committed == sorted(path.name for path in tmp_path.glob("*.png"))
    for name in committed:
        drawn = np.asarray(Image.open(tmp_path / name), np.int16)
        kept = np.asarray(Image.open(ROOT / "examples" / "digits" / name), np.int16)
        # Font rasterisers may differ by a level here and there; a changed digit differs everywhere.
        assert drawn.shape == kept.shape and np.abs(drawn - kept).mean() < 2, name
