"""The import contracts in pyproject.toml ([tool.importlinter]) hold on the real tree, and they bite: each one
breaks when a forbidden import is added to a small fake tree with the same package names, checked with the
very same configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# A miniature of onnx_serve and training: every module the contracts name, and the imports the real tree
# relies on being allowed (edges reach onnxruntime only through core; the root package's lazy facade,
# whose TYPE_CHECKING imports are written from the config's ignore_imports by fake_tree).
FAKE_TREE = {
    "onnx_serve/__init__.py": "from typing import TYPE_CHECKING\n__version__ = '0'\n",
    "onnx_serve/server.py": "from onnx_serve.edges.grpc import server\nfrom onnx_serve.core import runtime\n",
    "onnx_serve/types.py": "import numpy\n",
    "onnx_serve/cli.py": "from onnx_serve import workers\n",
    "onnx_serve/workers.py": "from onnx_serve.edges.grpc import server\n",
    "onnx_serve/core/__init__.py": "",
    "onnx_serve/core/errors.py": "",
    "onnx_serve/core/metrics.py": "from onnx_serve import __version__\nimport onnxruntime\nimport prometheus_client\n",
    "onnx_serve/core/runtime.py": (
        "import onnxruntime\nfrom onnx_serve.core import errors\nfrom onnx_serve import types\n"
    ),
    # The one protos module core may read (config.pbtxt's schema), by the contract's ignore_imports.
    "onnx_serve/core/triton_config.py": "from onnx_serve.protos.inference import model_config_pb2\n",
    "onnx_serve/imaging/__init__.py": "from onnx_serve.core import errors\nimport PIL\n",
    "onnx_serve/edges/__init__.py": "",
    "onnx_serve/edges/grpc/__init__.py": "",
    "onnx_serve/edges/grpc/server.py": (
        "import grpc\nimport grpc_health\nfrom onnx_serve.core import metrics, runtime\n"
        "from onnx_serve import imaging\nfrom onnx_serve.protos import service_pb2\n"
    ),
    "onnx_serve/protos/__init__.py": "",
    "onnx_serve/protos/service_pb2.py": "import google.protobuf\n",
    "onnx_serve/protos/inference/__init__.py": "",
    "onnx_serve/protos/inference/model_config_pb2.py": "import google.protobuf\n",
    "onnx_serve/client/__init__.py": "from onnx_serve.client.client import Client\n",
    "onnx_serve/client/client.py": (
        "import grpc\nfrom onnx_serve.protos import service_pb2\nfrom onnx_serve import types\n"
    ),
    "onnx_serve/bench/__init__.py": "import grpc\nfrom onnx_serve.core import runtime\n",
    "training/__init__.py": "import torch\nimport onnxruntime\n",
}


def lint_imports(cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the test extra (pip install -e '.[test]')"
    env = {**os.environ, "COLUMNS": "250"}
    if pythonpath is not None:  # ahead of the editable install's path entry, so the fake tree is the one found
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def facade_imports() -> list[str]:
    """The modules the root package imports only under TYPE_CHECKING, as the contracts' ignore_imports say."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = [line for contract in config["contracts"] for line in contract.get("ignore_imports", [])]
    return sorted({target.strip() for source, target in (line.split("->") for line in ignored)
                   if source.strip() == "onnx_serve"})


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    tree = dict(FAKE_TREE)
    for module in facade_imports():
        tree["onnx_serve/__init__.py"] += f"if TYPE_CHECKING:\n    import {module}\n"
        path = module.replace(".", "/")
        if f"{path}.py" not in tree and f"{path}/__init__.py" not in tree:
            tree[f"{path}.py"] = ""
    for name, text in tree.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # lint-imports reads [tool.importlinter]
    return tmp_path


def test_real_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fake_tree_keeps_every_contract(fake_tree: Path) -> None:
    result = lint_imports(fake_tree, pythonpath=fake_tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract", "chain"),
    [
        ("onnx_serve/core/leak.py", "import grpc\n", "core-imaging-transport-free", "onnx_serve.core.leak -> grpc"),
        ("onnx_serve/core/leak.py", "import grpc_reflection\n", "core-imaging-transport-free",
         "onnx_serve.core.leak -> grpc_reflection"),
        ("onnx_serve/imaging/leak.py", "import fastapi\n", "core-imaging-transport-free",
         "onnx_serve.imaging.leak -> fastapi"),
        ("onnx_serve/core/leak.py", "from onnx_serve.protos import service_pb2\n", "core-imaging-transport-free",
         "onnx_serve.core.leak -> onnx_serve.protos.service_pb2"),
        # Type-only imports count too: core's signatures stay free of transport types.
        ("onnx_serve/core/leak.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\n",
         "core-imaging-transport-free", "onnx_serve.core.leak -> grpc"),
        # The root facade's ignored lazy imports are no way around it for a direct import.
        ("onnx_serve/core/leak.py", "from onnx_serve import server\n", "core-imaging-transport-free",
         "onnx_serve.core.leak -> onnx_serve.server"),
        # Indirect: core reaching gRPC through the client still breaks the contract.
        ("onnx_serve/core/leak.py", "from onnx_serve.client import client\n", "core-imaging-transport-free",
         "onnx_serve.client.client -> grpc"),
        ("onnx_serve/edges/grpc/leak.py", "import onnxruntime\n", "edges-no-onnxruntime",
         "onnx_serve.edges.grpc.leak -> onnxruntime"),
        ("onnx_serve/client/leak.py", "from onnx_serve.core import errors\n", "client-standalone",
         "onnx_serve.client.leak -> onnx_serve.core.errors"),
        ("onnx_serve/client/leak.py", "import onnxruntime\n", "client-standalone",
         "onnx_serve.client.leak -> onnxruntime"),
        ("onnx_serve/client/leak.py", "from onnx_serve import workers\n", "client-standalone",
         "onnx_serve.client.leak -> onnx_serve.workers"),
        ("onnx_serve/core/leak.py", "import training\n", "server-no-training", "onnx_serve.core.leak -> training"),
        ("onnx_serve/bench/leak.py", "import torch\n", "server-no-training", "onnx_serve.bench.leak -> torch"),
    ],
)
def test_forbidden_import_breaks_its_contract(fake_tree: Path, module: str, source: str, contract: str,
                                              chain: str) -> None:
    (fake_tree / module).write_text(source)
    result = lint_imports(fake_tree, "--contract", contract, pythonpath=fake_tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout, result.stdout
    assert chain in result.stdout, result.stdout
