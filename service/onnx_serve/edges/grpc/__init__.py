"""The gRPC edge: KServe V2 with Triton's extensions and the ImageClassifier API over the data plane, with
TLS, bearer tokens, grpc.health.v1 and reflection."""

from onnx_serve.edges.grpc.classify import ClassifyServicer
from onnx_serve.edges.grpc.inference import InferenceServicer
from onnx_serve.edges.grpc.server import GrpcEdge
from onnx_serve.edges.shared import PortUnavailable

__all__ = ["ClassifyServicer", "GrpcEdge", "InferenceServicer", "PortUnavailable"]
