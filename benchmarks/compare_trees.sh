#!/usr/bin/env bash
# A/B of two checkouts' servers on the bundled mnist-cnn, in one run, with one client (the B tree's), to
# show that a change costs nothing on the request path:
#   git worktree add ../before REV && (cd ../before && python3 -m venv .venv && .venv/bin/pip install -e .)
#   bash benchmarks/compare_trees.sh ../before . /tmp/ab 4 [A_MODULE]
# Each tree needs its own .venv with onnx-serve installed. A_MODULE is how the A tree's CLI runs
# (default onnx_serve; `service.cli` before the package was named onnx_serve).
# Per round and tree: start the server, run `onnx-serve bench` (Python client, c=1 and c=32, server CPU per
# request via --server-pid) and the h2load C client (4x32, ../shared/peers/clients/h2load_grpc.py; needs
# h2load), stop the server. Rounds rotate the order (A B, B A, ...), so drift hits both sides alike.
set -euo pipefail
a=$1 b=$2 out=$3 rounds=${4:-2} a_module=${5:-onnx_serve}
a=$(cd "$a" && pwd) b=$(cd "$b" && pwd)
peers=$b/../shared/peers
mkdir -p "$out"
client=$b/.venv/bin
extra_flags() {  # tree module -> the flags only its version has: no HTTP port (Triton's 8000) and no drain delay
    if "$1/.venv/bin/python" -m "$2" serve --help 2>/dev/null | grep -q -- "--http-port"; then
        echo "--http-port -1 --drain-delay 0"
    fi
}
start() {  # tree label -> sets pid, port
    local tree=$1 log=$out/$2.log
    (cd "$tree" && exec "$tree/.venv/bin/python" -m "$3" serve --model-repository "$b/models" --host 127.0.0.1 --grpc-port 0 \
        --metrics-port 0 --grace-period 5 $(extra_flags "$tree" "$3")) >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        grep -q "server ready" "$log" && break
        sleep 0.1
    done
    port=$(grep -oE "grpc listening on [^ ]+:[0-9]+" "$log" | grep -oE "[0-9]+$")
    metrics=$(grep -oE "metrics listening on [^ ]+:[0-9]+" "$log" | grep -oE "[0-9]+$")
}
run_one() {  # tree name module
    start "$1" "$2" "$3"
    "$client/onnx-serve" bench --url "127.0.0.1:$port" --model mnist-cnn --concurrency 1,32 --duration 8 \
        --warmup 2 --server-pid "$pid" --no-progress --label "$2" --json "$out/$2.json" >"$out/$2.txt" 2>&1
    "$client/python" "$peers/clients/h2load_grpc.py" --target "127.0.0.1:$port" --model mnist-cnn \
        --input-name input --shape 1,28,28 --points 4x32 --seconds 8 --warmup 2 \
        --metrics "http://127.0.0.1:$metrics/metrics" --server-pid "$pid" >"$out/$2-h2load.txt" 2>&1 || true
    kill -TERM "$pid"; wait "$pid" || true
}
for round in $(seq "$rounds"); do
    if (( round % 2 )); then order="A B"; else order="B A"; fi
    for which in $order; do
        if [[ $which == A ]]; then run_one "$a" "before-r$round" "$a_module"
        else run_one "$b" "after-r$round" onnx_serve; fi
    done
done
