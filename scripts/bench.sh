#!/usr/bin/env bash
# Regenerate docs/benchmarks.md (and docs/benchmarks.png, bench-results/*.json): onnx-serve vs raw ONNX Runtime
# and the peer servers of ../shared/peers, same client, one run (~12 min on 2 cores; --quick ~4 min).
#
#   scripts/bench.sh [--quick] [--skip-peers] [--skip-resnet] [--duration S] ...
#
# PYTHON picks the interpreter (default: the active venv's python). Needs matplotlib for the chart
# (`pip install -e '.[plot]'`) and torch to build bench-models/resnet18 when it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" -m benchmarks.run "$@"
