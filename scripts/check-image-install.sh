#!/usr/bin/env bash
# Prove the container image's install steps without a container engine.
#
#   scripts/check-image-install.sh                  # CPU variant, with `python3` on PATH
#   VARIANT=gpu scripts/check-image-install.sh      # also swap in onnxruntime-gpu (a 250 MB download)
#   PYTHON=python3.12 scripts/check-image-install.sh
#
# 1. copies the build context (the allowlist of .dockerignore) to a temporary directory;
# 2. runs the Dockerfile builder stage's commands there: a fresh venv, the dependencies from
#    constraints.txt alone, onnx-serve with --no-deps, `pip check`, and for VARIANT=gpu
#    scripts/install-gpu.sh (keep these in step with the Dockerfile);
# 3. smoke-runs the installed console script the way the image runs it, from outside the source tree:
#    `onnx-serve --help`, then `onnx-serve serve` on free ports with the bundled models, a gRPC health
#    check of "" (ready) and "liveness", a scrape of /metrics, and SIGTERM, which must exit 0.
# Needs PyPI (pip downloads the locked wheels). Exits non-zero on the first failure.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
variant=${VARIANT:-cpu}
work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '== %s\n' "$*"; }

step "build context -> $work/src"
mkdir -p "$work/src"
tar -C "$repo_root" -cf - \
    --exclude='__pycache__' --exclude='*.py[cod]' --exclude='*.egg-info' \
    --exclude='models/efficientnet-lite0' \
    pyproject.toml README.md constraints.txt service models scripts/install-gpu.sh |
    tar -C "$work/src" -xf -

# ---- the Dockerfile's builder stage, with /opt/venv -> $venv and /src -> $src --------------------
src=$work/src
venv=$work/venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
step "$("$python" --version) -m venv"
"$python" -m venv "$venv"
step "dependencies from constraints.txt"
"$venv/bin/pip" install --no-cache-dir --requirement "$src/constraints.txt"
step "onnx-serve --no-deps, pip check"
"$venv/bin/pip" install --no-cache-dir --no-deps "$src" \
    && "$venv/bin/pip" check
if [[ $variant == gpu ]]; then
    step "swap in onnxruntime-gpu"
    sh "$src/scripts/install-gpu.sh" "$venv/bin/python"
fi
if "$venv/bin/pip" list --format=freeze | grep -iE '^(torch|gcc|setuptools-scm)=='; then
    echo "the image environment must not contain the packages above" >&2
    exit 1
fi

# ---- smoke run, as the image runs it: from another directory, PATH to the venv, no ONNX_SERVE_* ----
for name in $(compgen -e); do
    [[ $name == ONNX_SERVE_* ]] && unset "$name"
done
export PATH="$venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd "$work"

step "onnx-serve --help"
onnx-serve --help >"$work/help.txt"
head -n 3 "$work/help.txt"
python -c 'import onnx_serve, sys; assert onnx_serve.__file__.startswith(sys.prefix), onnx_serve.__file__'
# The distribution installs one top-level package, onnx_serve: nothing named `service` (a PyPI project and
# a common application folder name) may come with it.
python -c 'import importlib.util as u; assert u.find_spec("service") is None, "a top-level service module is installed"'

step "onnx-serve serve (bundled models, free ports)"
# The image points the server at its models with this variable (Dockerfile ENV).
ONNX_SERVE_MODEL_REPOSITORY="$src/models" \
    onnx-serve serve --host 127.0.0.1 --grpc-port 0 --http-port 0 --metrics-port 0 --drain-delay 0 --grace-period 5 \
    >"$work/server.log" 2>&1 &
server_pid=$!

if ! python - "$work/server.log" "$server_pid" <<'PY'; then
"""Wait for the server's ports, then check health over gRPC and HTTP, and scrape the metrics."""
import os
import re
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log_path, server_pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120


def server_alive() -> bool:
    try:
        os.kill(server_pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_address(what: str) -> str:
    pattern = re.compile(rf"{what} listening on (\S+:\d+)")
    while time.monotonic() < deadline:
        with open(log_path) as log:
            found = pattern.search(log.read())
        if found:
            return found.group(1)
        if not server_alive():
            sys.exit("server exited before listening")
        time.sleep(0.2)
    sys.exit(f"no '{what} listening on' line within the deadline")


grpc_address = wait_for_address("grpc")
metrics_address = wait_for_address("metrics")
with grpc.insecure_channel(grpc_address) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service_name in ("liveness", ""):
        status = None
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=2).status
            except grpc.RpcError as error:
                status = error.code()
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.5)
        else:
            sys.exit(f"health {service_name!r} is {status}, not SERVING")
        print(f"health {service_name!r}: SERVING at {grpc_address}")
with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
    metrics = response.read().decode()
for metric in ("onnx_serve_build_info", "onnx_serve_model_ready"):
    if metric not in metrics:
        sys.exit(f"/metrics at {metrics_address} lacks {metric}")
print(f"metrics: {len(metrics.splitlines())} lines at {metrics_address}")
http_address = wait_for_address("http")
with urllib.request.urlopen(f"http://{http_address}/v2/health/ready", timeout=5) as response:
    if response.status != 200:
        sys.exit(f"HTTP /v2/health/ready at {http_address} answered {response.status}")
print(f"HTTP /v2/health/ready: 200 at {http_address}")
PY
    echo "---- server log" >&2
    cat "$work/server.log" >&2
    exit 1
fi

step "SIGTERM: drain and exit 0"
kill -TERM "$server_pid"
status=0
for _ in $(seq 1 300); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
    echo "server still running 30 s after SIGTERM" >&2
    cat "$work/server.log" >&2
    exit 1
fi
wait "$server_pid" || status=$?
server_pid=
if [[ $status -ne 0 ]]; then
    echo "server exited with status $status after SIGTERM" >&2
    cat "$work/server.log" >&2
    exit 1
fi
step "image install steps OK ($variant)"
