#!/usr/bin/env bash
# Classify image files with a running onnx-serve over its HTTP edge, with nothing but curl:
#
#   bash examples/curl/classify.sh localhost:8000 examples/digits/*.png
#
# Each image is one POST of its bytes to /v2/models/<model>/classify; the answer is JSON
# ({"model_name", "model_version", "results": [{"predictions": [{"label", "index", "score"}, ...]}]}),
# printed one line per image after the file name. MODEL (default mnist-cnn) and TOP_K (default 3) come from the
# environment. Exit status: curl's, at the first image that fails (an HTTP error prints the server's
# {"error": "..."} on stderr).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash classify.sh HOST:PORT IMAGE..." >&2
    exit 2
fi
address=$1
shift
for image in "$@"; do
    printf '%s ' "$image"
    curl --silent --show-error --fail-with-body --data-binary "@$image" -H 'Content-Type: application/octet-stream' \
        "http://$address/v2/models/${MODEL:-mnist-cnn}/classify?top_k=${TOP_K:-3}"
    echo
done
