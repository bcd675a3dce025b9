"""Regenerate docs/benchmarks.md in one run: issue #15's targets, both bench drivers (h2load's C client and the
Python client), onnx-serve against raw ONNX Runtime and the peers of ../shared/peers (PyTriton, MLServer, the
do-nothing server). A thin entry point to benchmarks.run; see its docstring for what is measured and carried.

    .venv/bin/python scripts/run_benchmarks.py             # the full run (~13-15 min on 2 cores, machine quiet)
    .venv/bin/python scripts/run_benchmarks.py --quick     # a smoke run of every step (~4 min)
    .venv/bin/python scripts/run_benchmarks.py --render-only
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package
    os.environ.setdefault("BENCHMARKS_COMMAND", "python scripts/run_benchmarks.py")
    from benchmarks.run import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
