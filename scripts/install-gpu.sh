#!/bin/sh
# Switch an environment that has onnx-serve installed from the CPU onnxruntime wheel to onnxruntime-gpu
# of the same version.
#
#   scripts/install-gpu.sh                          # the environment of `python3` on PATH
#   scripts/install-gpu.sh /opt/venv/bin/python     # the environment of that interpreter
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
# VARIANT=gpu), provides those libraries.
set -eu

python=${1:-python3}

version=$("$python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))' 2>/dev/null || true)
if [ -z "$version" ]; then
    version=$("$python" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))' 2>/dev/null || true)
    if [ -n "$version" ]; then
        echo "onnxruntime-gpu $version is already installed"
        exit 0
    fi
    echo "install-gpu: onnxruntime is not installed in the environment of $python" >&2
    exit 1
fi

"$python" -m pip uninstall --yes onnxruntime
"$python" -m pip install --no-cache-dir --no-deps "onnxruntime-gpu==$version"

# The GPU wheel lists the CUDA provider whether or not a GPU is present; this proves the swap, not the GPU.
"$python" -c '
import onnxruntime
providers = onnxruntime.get_available_providers()
assert "CUDAExecutionProvider" in providers, providers
print("onnxruntime-gpu", onnxruntime.__version__, "providers:", ", ".join(providers))
'
