#!/bin/sh
# Switch an environment that has onnx-serve installed from the CPU onnxruntime wheel to onnxruntime-gpu
# of the same version.
#
#   scripts/install-gpu.sh                                  # the environment of `python3` on PATH
#   scripts/install-gpu.sh /opt/venv/bin/python             # the environment of that interpreter
#   scripts/install-gpu.sh /opt/venv/bin/python --with-cuda-libs   # and CUDA + cuDNN from PyPI
#
# Why a script: onnxruntime and onnxruntime-gpu are two distributions that install the same
# `onnxruntime` package directory, and pip knows nothing of the clash. Installing the GPU wheel over
# the CPU one leaves a mix of files; removing the CPU one afterwards deletes files the GPU one needs.
# So: remove the CPU wheel first, then install the GPU wheel with --no-deps (its dependencies --
# numpy, protobuf, flatbuffers, packaging -- are onnx-serve's too and already installed at the
# versions of constraints.txt). Any later `pip install` that resolves onnx-serve's dependencies
# would pull the CPU wheel back in (onnx-serve requires `onnxruntime`); install onnx-serve itself
# with --no-deps in a GPU environment, and run this script after every dependency change.
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the host, or the image (Dockerfile,
# VARIANT=gpu), provides those libraries. A host with only the NVIDIA driver can take them from PyPI
# instead (--with-cuda-libs: the wheel's `cuda` and `cudnn` extras, the nvidia-* wheels, some GB); they
# land in site-packages/nvidia/*/lib, which the loader searches only when LD_LIBRARY_PATH names them
# (scripts/gpu_check.py does that for its servers).
set -eu

python=${1:-python3}
with_cuda_libs=${2:-}
case "$with_cuda_libs" in
    ""|--with-cuda-libs) ;;
    *) echo "install-gpu: unknown option $with_cuda_libs (usage: install-gpu.sh [PYTHON] [--with-cuda-libs])" >&2
       exit 2 ;;
esac
constraints=$(dirname "$0")/../constraints.txt

cuda_libs() {  # the nvidia-* wheels of the extras; onnxruntime-gpu itself is already there, so pip keeps it
    [ -n "$with_cuda_libs" ] || return 0
    "$python" -m pip install --no-cache-dir -c "$constraints" "onnxruntime-gpu[cuda,cudnn]==$1"
}

version=$("$python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null || true)
if [ -z "$version" ]; then
    version=$("$python" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))' 2>/dev/null || true)
    if [ -n "$version" ]; then
        echo "onnxruntime-gpu $version is already installed"
        cuda_libs "$version"
        exit 0
    fi
    echo "install-gpu: onnxruntime is not installed in the environment of $python" >&2
    exit 1
fi

"$python" -m pip uninstall --yes onnxruntime
"$python" -m pip install --no-cache-dir --no-deps "onnxruntime-gpu==$version"
cuda_libs "$version"

# The GPU wheel lists the CUDA provider whether or not a GPU is present; this proves the swap, not the GPU.
"$python" -c '
import onnxruntime
providers = onnxruntime.get_available_providers()
assert "CUDAExecutionProvider" in providers, providers
print("onnxruntime-gpu", onnxruntime.__version__, "providers:", ", ".join(providers))
'
