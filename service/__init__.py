"""onnx-serve: a gRPC model server for ONNX image classifiers."""

__version__ = "0.1.0"
