"""`onnx-serve quantize`: static INT8 quantization of a repository model into a new version, gated on its
agreement with FP32 on held-out samples (samples, quantizer, evaluate, report, pipeline, cli)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_serve._lazy import lazy_exports

if TYPE_CHECKING:
    from onnx_serve.tools.quantize.cli import add_quantize_parser, run_quantize
    from onnx_serve.tools.quantize.errors import QuantizeError
    from onnx_serve.tools.quantize.pipeline import QuantizeRequest, run
    from onnx_serve.tools.quantize.quantizer import QuantizeOptions

_EXPORTS = {
    "add_quantize_parser": "onnx_serve.tools.quantize.cli",
    "run_quantize": "onnx_serve.tools.quantize.cli",
    "QuantizeError": "onnx_serve.tools.quantize.errors",
    "QuantizeRequest": "onnx_serve.tools.quantize.pipeline",
    "run": "onnx_serve.tools.quantize.pipeline",
    "QuantizeOptions": "onnx_serve.tools.quantize.quantizer",
}
__all__ = ["QuantizeError", "QuantizeOptions", "QuantizeRequest", "add_quantize_parser", "run", "run_quantize"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
