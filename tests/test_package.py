"""The package as users import it: every sub-package's chosen surface resolves, the client loads without the
server, `python -m onnx_serve` runs, and nothing named `service` is importable from an installed tree."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("onnx_serve", "onnx_serve.core", "onnx_serve.imaging", "onnx_serve.edges.grpc", "onnx_serve.client",
            "onnx_serve.bench")


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__all__, f"{name} names no public surface"
    for public in package.__all__:
        assert getattr(package, public) is not None, f"{name}.{public}"
    assert set(package.__all__) <= set(dir(package))


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_the_client_loads_without_the_server_or_onnxruntime() -> None:
    loaded = run_python("import sys\nfrom onnx_serve import Client, Prediction\n"
                        "print(sorted(m for m in ('onnxruntime', 'onnx_serve.core.dataplane', 'onnx_serve.edges',"
                        " 'onnx_serve.imaging') if m in sys.modules))")
    assert loaded == "[]"


def test_one_core_module_does_not_load_onnxruntime() -> None:
    assert run_python("import sys\nimport onnx_serve.core.errors\nprint('onnxruntime' in sys.modules)") == "False"


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "onnx_serve", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("onnx-serve ")


def test_logging_setup_touches_only_our_loggers() -> None:
    """An application that embeds the server keeps its root logger: handlers and level."""
    code = ("import logging, sys\nroot = logging.getLogger()\nmine = logging.StreamHandler(sys.stdout)\n"
            "root.addHandler(mine); root.setLevel(logging.ERROR)\n"
            "from onnx_serve.logs import setup_logging\nsetup_logging('debug', 'json', access_log=True)\n"
            "ours = logging.getLogger('onnx_serve')\n"
            "print(root.handlers == [mine], root.level == logging.ERROR, ours.level == logging.DEBUG,"
            " logging.getLogger('onnx_serve.access').level == logging.INFO, ours.propagate)")
    assert run_python(code) == "True True True True False"
