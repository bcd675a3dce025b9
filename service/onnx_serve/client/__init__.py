"""The typed onnx-serve client (sync and asyncio) and its `onnx-serve classify`, `health` and `models` commands.
It imports nothing of the server, so applications install and import it without onnxruntime being loaded.

    from onnx_serve import Client

    with Client("127.0.0.1:8001") as client:
        [top] = client.classify("digit.png")
"""

from onnx_serve.client.client import AsyncClient, Client
from onnx_serve.client.messages import (
    DEFAULT_MODEL,
    DEFAULT_URL,
    ClientError,
    ModelMetadata,
    ModelState,
    Prediction,
    StreamResult,
    TensorMetadata,
)
from onnx_serve.types import TensorSpec

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "AsyncClient", "Client", "ClientError", "ModelMetadata", "ModelState",
           "Prediction", "StreamResult", "TensorMetadata", "TensorSpec"]
