"""The benchmark-report harness behind docs/benchmarks.md: `python -m benchmarks.run` starts onnx-serve, raw
ONNX Runtime and the peer servers one after another, measures each with `onnx-serve bench`, and renders the
report. It is a developer tool: it imports onnx_serve, and the wheel does not ship it."""
