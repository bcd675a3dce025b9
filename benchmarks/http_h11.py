"""`onnx-serve serve` with uvicorn's pure-Python h11 protocol in place of httptools, for the HTTP edge's library
comparison only (benchmarks/http.py): the same app, loop and process; the edge's head-size and head-time bounds
(protocol.py, built on the httptools protocol) are not in this variant.

    python -m benchmarks.http_h11 serve --model-repository models ...   # the arguments of `onnx-serve`
"""

from __future__ import annotations

import sys
from typing import Any

import onnx_serve.edges.http.server as http_server
from uvicorn.protocols.http.h11_impl import H11Protocol


def _h11(head_timeout_s: float) -> type[Any]:
    return H11Protocol


http_server.protocol_class = _h11  # server.py looks the name up when the edge starts

if __name__ == "__main__":
    from onnx_serve.cli import main

    sys.exit(main())
