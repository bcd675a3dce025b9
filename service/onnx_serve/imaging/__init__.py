"""Images from untrusted clients: decode with budgets, preprocess into a model input, postprocess scores into
top-k labels. No grpc, no HTTP, no onnxruntime."""

from onnx_serve.imaging.decode import ImageLimits, decode_image, image_from_pixels, to_standard_mode
from onnx_serve.imaging.preprocess import (
    PostprocessConfig,
    Prediction,
    PreprocessConfig,
    load_labels,
    parse_limits,
    parse_postprocess,
    parse_preprocess,
    preprocess,
    shorter_side_geometry,
    top_k,
)

__all__ = [
    "ImageLimits", "PostprocessConfig", "Prediction", "PreprocessConfig", "decode_image", "image_from_pixels",
    "load_labels", "parse_limits", "parse_postprocess", "parse_preprocess", "preprocess", "shorter_side_geometry",
    "to_standard_mode", "top_k",
]  # fmt: skip
