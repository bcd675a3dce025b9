"""Offline tools that change a model repository: `onnx-serve quantize` (INT8 with an accuracy gate)."""
