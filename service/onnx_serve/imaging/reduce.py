"""Reduce before you frame: shrink a large image by whole factors (Pillow's box-averaging ``Image.reduce``)
before it is converted, composited, framed or resized, so those steps work on an image a few times the model's
input, never on the 40 M pixels a client may send. How far is the preprocessing's call
(:func:`~onnx_serve.imaging.preprocess.reduction_factor`); this module does it without wide copies, and keeps
the factor right for images an EXIF orientation turns.
"""

from __future__ import annotations

from PIL import Image

from onnx_serve.imaging.decode import STRIP_PIXELS, to_standard_mode

_AXES_SWAPPED = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                           Image.Transpose.ROTATE_270})
_TRANSPOSE_BY_ORIENTATION = {  # EXIF orientation -> the transpose that displays the image upright (as ImageOps)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_REDUCIBLE_AS_STORED = frozenset({"L", "RGB"})  # reduce() averages them as they are, with no wider copy


def reduced_size(size: tuple[int, int], factor: tuple[int, int]) -> tuple[int, int]:
    """The size ``Image.reduce(factor)`` makes: a partial block at the right or bottom edge is a pixel too."""
    return -(-size[0] // factor[0]), -(-size[1] // factor[1])


def reduce_to_standard(image: Image.Image, factor: tuple[int, int]) -> Image.Image:
    """``to_standard_mode(image).reduce(factor)``, without ever holding the whole image in a wider mode.

    ``L`` and ``RGB`` are reduced as they are. Any other mode (palette, alpha, 16-bit, float, CMYK...) is
    converted and reduced a strip of rows at a time (each a multiple of the factor high, so every block is
    averaged whole, and the result is exactly the reduce of the converted image): converting a 40 M pixel
    palette image to RGBA, or reducing RGBA through its premultiplied copy, would otherwise take 160 MB more.
    With ``factor`` (1, 1) this is :func:`to_standard_mode`.
    """
    if factor == (1, 1):
        return to_standard_mode(image)
    if image.mode in _REDUCIBLE_AS_STORED and "transparency" not in image.info:
        return image.reduce(factor)
    width, height = image.size
    rows = max(1, STRIP_PIXELS // (width * factor[1])) * factor[1]
    reduced: Image.Image | None = None
    for top in range(0, height, rows):
        strip = to_standard_mode(image.crop((0, top, width, min(height, top + rows)))).reduce(factor)
        if reduced is None:
            reduced = Image.new(strip.mode, reduced_size(image.size, factor))
        reduced.paste(strip, (0, top // factor[1]))
    assert reduced is not None  # an image has at least one row
    return reduced


def upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose its EXIF orientation asks for (None: upright already, or an unreadable EXIF block, which is
    ignored as :func:`~onnx_serve.imaging.decode.decode_image` ignores it)."""
    try:
        return _TRANSPOSE_BY_ORIENTATION.get(image.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block is not worth refusing the image for
        return None


def upright_size(size: tuple[int, int], transpose: Image.Transpose | None) -> tuple[int, int]:
    return (size[1], size[0]) if transpose in _AXES_SWAPPED else size


def stored_factor(factor: tuple[int, int], transpose: Image.Transpose | None) -> tuple[int, int]:
    """A factor for the upright image, as the factor to reduce the stored (not yet transposed) image by."""
    return (factor[1], factor[0]) if transpose in _AXES_SWAPPED else factor
