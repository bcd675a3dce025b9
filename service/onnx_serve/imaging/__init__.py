"""Images from untrusted clients: decode with budgets, preprocess into a model input, postprocess scores into
top-k labels. No grpc, no HTTP, no onnxruntime.

decode (bytes or pixels -> image), config (the model's preprocess/postprocess/limits sections), preprocess
(image -> tensor), reduce (shrink a large image before it is framed or resized), framing (MNIST's centre-of-mass
framing), budget (the server's decoded bytes in flight), pipeline (bytes -> tensor within the budgets, what the
server runs), postprocess (scores -> top-k, labels)."""

from onnx_serve.imaging.budget import DecodingBudget
from onnx_serve.imaging.config import (
    PostprocessConfig,
    PreprocessConfig,
    parse_limits,
    parse_postprocess,
    parse_preprocess,
)
from onnx_serve.imaging.decode import (
    LARGE_IMAGE_PIXELS,
    ImageLimits,
    decode_image,
    image_from_pixels,
    stored_pixels,
    to_standard_mode,
)
from onnx_serve.imaging.framing import frame_by_mass
from onnx_serve.imaging.pipeline import decode_and_preprocess
from onnx_serve.imaging.postprocess import load_labels, top_k
from onnx_serve.imaging.preprocess import preprocess, reduction_factor, shorter_side_geometry
from onnx_serve.types import Prediction

__all__ = [
    "LARGE_IMAGE_PIXELS", "DecodingBudget", "ImageLimits", "PostprocessConfig", "Prediction", "PreprocessConfig",
    "decode_and_preprocess", "decode_image", "frame_by_mass", "image_from_pixels", "load_labels", "parse_limits",
    "parse_postprocess", "parse_preprocess", "preprocess", "reduction_factor", "shorter_side_geometry", "stored_pixels",
    "to_standard_mode", "top_k",
]  # fmt: skip
