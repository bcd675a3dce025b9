"""The transport-neutral core: the data plane every edge calls, and what it stands on (codec, batching,
runtime, repository, statistics, metrics, tracing, settings, model configuration, errors). It imports no
grpc and no HTTP framework.

The names below are loaded on first use: importing one core module (say `onnx_serve.core.errors`) does
not load onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_serve._lazy import lazy_exports

if TYPE_CHECKING:
    from onnx_serve.core.dataplane import (
        ClassifyResult,
        DataPlane,
        EncodedImage,
        ImageSource,
        InferResult,
        ModelMetadata,
        RawImage,
        RequestedOutput,
    )
    from onnx_serve.core.errors import (
        ConfigError,
        DeadlineExceeded,
        Internal,
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        ServeError,
        Unavailable,
    )
    from onnx_serve.core.metrics import Metrics
    from onnx_serve.core.repository import Repository
    from onnx_serve.core.settings import Settings
    from onnx_serve.core.version import State

_EXPORTS = {
    **dict.fromkeys(["ClassifyResult", "DataPlane", "EncodedImage", "ImageSource", "InferResult", "ModelMetadata",
                     "RawImage", "RequestedOutput"], "onnx_serve.core.dataplane"),
    **dict.fromkeys(["ConfigError", "DeadlineExceeded", "Internal", "InvalidArgument", "NotFound",
                     "ResourceExhausted", "ServeError", "Unavailable"], "onnx_serve.core.errors"),
    "Metrics": "onnx_serve.core.metrics",
    "Repository": "onnx_serve.core.repository",
    "State": "onnx_serve.core.version",
    "Settings": "onnx_serve.core.settings",
}
__all__ = ["ClassifyResult", "ConfigError", "DataPlane", "DeadlineExceeded", "EncodedImage", "ImageSource",
    "InferResult", "Internal", "InvalidArgument", "Metrics", "ModelMetadata", "NotFound", "RawImage", "Repository",
    "RequestedOutput", "ResourceExhausted", "ServeError", "Settings", "State", "Unavailable"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
