"""onnx-serve: a model server for ONNX image classifiers (KServe V2 gRPC, Classify, dynamic batching).

The public surface is imported lazily, so `from onnx_serve import Client` loads the client alone, never
onnxruntime or the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_serve._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from onnx_serve.client import AsyncClient, Client, ClientError, Prediction
    from onnx_serve.core.settings import Settings
    from onnx_serve.server import Server

_EXPORTS = {
    "AsyncClient": "onnx_serve.client",
    "Client": "onnx_serve.client",
    "ClientError": "onnx_serve.client",
    "Prediction": "onnx_serve.client",
    "Server": "onnx_serve.server",
    "Settings": "onnx_serve.core.settings",
}

__all__ = ["AsyncClient", "Client", "ClientError", "Prediction", "Server", "Settings", "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
