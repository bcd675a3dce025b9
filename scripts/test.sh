#!/usr/bin/env bash
# The test command: creates .venv if missing, installs onnx-serve with its test extra, lints,
# checks import contracts (lint-imports) and types (mypy), runs pytest.
#   bash scripts/test.sh [pytest args...]
# Tests that need tools outside Python (promtool/prometheus, kubectl, checkov, hadolint, torch for the
# trainer) skip with the reason when a tool is missing; .ci/run installs them all first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/ruff check .
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/lint-imports --no-logo            # import contracts: [tool.importlinter] in pyproject.toml
.venv/bin/mypy --cache-dir .mypy_cache      # types: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest "$@"
