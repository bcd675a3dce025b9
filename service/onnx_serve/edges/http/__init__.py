"""The HTTP edge: KServe V2 REST with Triton's binary tensor data and HTTP extensions, and Classify with a raw
image body or multipart/form-data, over the data plane, on uvicorn's httptools protocol."""

from onnx_serve.edges.http.server import HttpEdge

__all__ = ["HttpEdge"]
