"""One encoded image -> one model input sample, the way the server does it: decode within budgets, and reduce
before you frame, so the memory an image takes is bounded by the limits, not by what its pixels decode to.

:func:`decode_and_preprocess` gives what ``preprocess(decode_image(data, limits), cfg)`` gives (exactly, but for
large JPEGs, which the decoder downscales, and large EXIF-rotated images, whose partial edge blocks fall on
another side), with these bounds on the way:

- the per-image limits from the header, before any pixel is decoded: ``max_image_bytes``, ``max_image_pixels``
  and ``max_decoded_bytes`` (:class:`~onnx_serve.imaging.decode.ImageLimits`), a JPEG measured at the scale
  libjpeg decodes it at;
- the server's :class:`~onnx_serve.imaging.budget.DecodingBudget`, held from before the pixels are decoded
  until the sample is made, for the decoded pixels, the decoder's own buffers
  (:func:`~onnx_serve.imaging.decode.decoder_buffer_bytes`) and the reduced copies;
- the decoded image is reduced at once, in the mode it was decoded in (no whole-image conversion, see
  :func:`~onnx_serve.imaging.reduce.reduce_to_standard`), and let go; only the reduced image is composited,
  framed and resized.
"""

from __future__ import annotations

import contextlib

import numpy as np
from PIL import Image

from onnx_serve.imaging.budget import DecodingBudget
from onnx_serve.imaging.config import PreprocessConfig
from onnx_serve.imaging.decode import (
    STRIP_PIXELS,
    ImageLimits,
    bytes_per_pixel,
    check_decoded_bytes,
    decoder_buffer_bytes,
    load_image,
    open_image,
)
from onnx_serve.imaging.preprocess import preprocess_reduced, reduction_factor
from onnx_serve.imaging.reduce import (
    reduce_to_standard,
    reduced_size,
    stored_factor,
    upright_size,
    upright_transpose,
)

WORKING_BYTES_PER_PIXEL = 12
"""What a reduced image costs on top of the decoded one, per pixel: itself in a standard mode (up to 4 bytes a
pixel) and the couple of same-sized copies preprocessing makes of it (composited, grey, framed). A strip being
converted (:data:`~onnx_serve.imaging.decode.STRIP_PIXELS` at most) is charged at the same rate: its crop, its
standard mode and the premultiplied copy that reducing alpha makes."""


def decode_and_preprocess(data: bytes | bytearray | memoryview, limits: ImageLimits, cfg: PreprocessConfig,
                          budget: DecodingBudget | None = None) -> np.ndarray:
    """Decode ``data`` and preprocess it as ``cfg`` says, within ``limits`` and ``budget`` (see the module).

    Raises :class:`~onnx_serve.core.errors.InvalidArgument` for an image that is bad or over a per-image limit,
    :class:`~onnx_serve.core.errors.ResourceExhausted` when the server's budget has no room for it.
    """
    image = open_image(data, limits)
    decoder_bytes = decoder_buffer_bytes(image)  # before the draft: a progressive JPEG's are full size
    if image.format == "JPEG":
        _draft(image, cfg)
    check_decoded_bytes(image.mode, image.size, limits)
    transpose = upright_transpose(image)
    working = reduced_size(image.size, _stored_reduction(image, cfg, transpose))
    pixels = image.width * image.height
    needed = (pixels * bytes_per_pixel(image.mode) + decoder_bytes
              + (working[0] * working[1] + min(pixels, STRIP_PIXELS)) * WORKING_BYTES_PER_PIXEL)
    with budget.reserve(needed) if budget is not None else contextlib.nullcontext():
        load_image(image, limits)
        transpose = upright_transpose(image)  # a PNG's or WebP's EXIF may follow its pixels: known only now
        reduced = reduce_to_standard(image, _stored_reduction(image, cfg, transpose))
        if reduced is not image:
            image.close()  # frees the decoded pixels now, not when this returns
        if transpose is not None:
            reduced = reduced.transpose(transpose)
        return preprocess_reduced(reduced, cfg)


def _stored_reduction(image: Image.Image, cfg: PreprocessConfig, transpose: Image.Transpose | None
                      ) -> tuple[int, int]:
    """The reduction factor for the image as it is stored, computed for it as it is shown (EXIF orientation)."""
    return stored_factor(reduction_factor(cfg, upright_size(image.size, transpose)), transpose)


def _draft(image: Image.Image, cfg: PreprocessConfig) -> None:
    """Have libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale (its DCT averages for free, and the full-size
    pixels never exist), to no less than twice the size the reduction makes, so a box average still does the
    last step. Small JPEGs are left alone: nothing to reduce."""
    factor = _stored_reduction(image, cfg, upright_transpose(image))  # a JPEG's EXIF is in its header
    if max(factor) < 4:  # draft halves at least, and the draft keeps twice the reduced size
        return
    width, height = reduced_size(image.size, factor)
    image.draft(None, (2 * width, 2 * height))
