"""The Classify transform: one decoded image -> one model input sample, as a model's ``preprocess:`` says.

No grpc, no onnxruntime. The config lives in :mod:`onnx_serve.imaging.config`, MNIST framing in
:mod:`onnx_serve.imaging.framing`.

Threads: Pillow releases the GIL in ``convert``, ``paste``, ``resize`` and ``crop`` and numpy in the
lookup-table gather, so :func:`preprocess` scales across a thread pool; the Python around them is a few
microseconds per image.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from onnx_serve.imaging.config import PreprocessConfig
from onnx_serve.imaging.decode import to_standard_mode
from onnx_serve.imaging.framing import frame_by_mass, is_dark_on_light
from onnx_serve.imaging.reduce import reduce_to_standard

RESIZE_GAP = 4
"""A resize's source is reduced no further than this many times the size it is resized to, per axis: Pillow's
``reducing_gap``, which its documentation finds indistinguishable from resampling the whole image at 3."""
MASS_WORKING_SCALE = 8
"""``center: mass`` frames the ink's bounding box, which may be a small part of the image: the image's longer
side is reduced no further than this many times the input's longer side (224 pixels for 28 x 28), so a digit
that fills a quarter of the page still comes from about 3 times the 20-pixel box it is scaled to."""


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Turn one image into one model input sample (no batch axis), shaped ``cfg.output_shape``.

    Steps, in order (each skipped when it would not change anything, so no needless copies):

    0. Reduce before you frame: a large image is reduced by :func:`reduction_factor` (box averages), so
       what follows works on a bounded image whatever the client sent.
    1. :func:`~onnx_serve.imaging.decode.to_standard_mode` (``L``/``LA``/``RGB``/``RGBA``, 8 bits), in the
       same pass as step 0 (see :func:`~onnx_serve.imaging.reduce.reduce_to_standard`).
    2. Alpha is composited onto the grey level ``background``:
       ``round((pixel * a + background * (255 - a)) / 255)``.
    3. Colour: ``L`` via Pillow's ITU-R 601-2 luma (``0.299 R + 0.587 G + 0.114 B``), or ``RGB``.
    4. Resize with ``interpolation`` (Pillow's filters, which antialias when shrinking):
       ``exact`` to ``width x height``; ``shorter_side`` as in torchvision's ImageNet evaluation, see
       :func:`shorter_side_geometry`.
    5. ``invert: auto`` inverts when the image is dark-on-light: the mean luma of the 1-pixel border
       (each pixel once) of the resized image, i.e. what the model sees, is above 127.
    6. Per value: ``((255 - p if invert else p) * scale - mean[c]) / std[c]``, computed in float64 once
       per config into a 256-entry table per channel and rounded once to ``dtype`` (UINT8: rounded
       and clipped), then gathered. ``BGR`` reverses the channel order; ``layout`` picks CHW or HWC.

    With ``center: mass``, an image that is not already ``width x height`` is framed by
    :func:`~onnx_serve.imaging.framing.frame_by_mass` instead of steps 4 and 5.

    Deterministic. Returns a new C-contiguous array the caller owns.
    """
    return preprocess_reduced(reduce_to_standard(image, reduction_factor(cfg, image.size)), cfg)


def preprocess_reduced(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """:func:`preprocess` from step 1, for an image already reduced by :func:`reduction_factor` (as
    :func:`~onnx_serve.imaging.pipeline.decode_and_preprocess` does while decoding)."""
    image = to_standard_mode(image)  # a no-op for what reduce_to_standard made
    if image.mode in ("LA", "RGBA"):
        image = _composite_on_background(image, cfg.background)
    target_mode = "L" if cfg.color_mode == "L" else "RGB"
    if image.mode != target_mode:
        image = image.convert(target_mode)
    if cfg.center == "mass" and image.size != (cfg.width, cfg.height):
        pixels, invert = frame_by_mass(np.asarray(image), cfg), False
    else:
        pixels = np.asarray(_resize(image, cfg))  # uint8 (H, W) or (H, W, 3): one copy, of the small image
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis]
        invert = is_dark_on_light(pixels) if cfg.invert == "auto" else cfg.invert
    if cfg.color_mode == "BGR":
        pixels = pixels[:, :, ::-1]
    table = _lookup_table(cfg, invert)
    if cfg.layout == "NCHW":
        out = np.empty(cfg.output_shape, dtype=table.dtype)
        for channel in range(cfg.channels):  # one vectorised gather per channel, into its plane
            np.take(table[channel], pixels[:, :, channel], out=out[channel], mode="clip")
        return out
    gathered: np.ndarray = table[np.arange(cfg.channels), pixels]  # (H, W, C): broadcast gather
    return gathered


def reduction_factor(cfg: PreprocessConfig, size: tuple[int, int]) -> tuple[int, int]:
    """(x, y) whole factors to reduce an upright image of ``size`` by before it is resized or framed; (1, 1) for
    one small enough already, which is then preprocessed exactly as it is.

    ``resize: exact``: each axis on its own, to at least :data:`RESIZE_GAP` times the input (the resize sets both
    anyway). ``shorter_side``: one factor, keeping the aspect ratio the geometry is computed from. ``center:
    mass``: one factor, the longer side kept at least :data:`MASS_WORKING_SCALE` times the input's longer side.
    """
    width, height = size
    if cfg.center == "mass":
        factor = max(1, max(width, height) // (MASS_WORKING_SCALE * max(cfg.width, cfg.height)))
        return factor, factor
    if cfg.resize == "exact":
        return max(1, width // (RESIZE_GAP * cfg.width)), max(1, height // (RESIZE_GAP * cfg.height))
    (resized_width, resized_height), _ = shorter_side_geometry(size, cfg.width, cfg.height, cfg.crop_fraction)
    factor = max(1, min(width // (RESIZE_GAP * resized_width), height // (RESIZE_GAP * resized_height)))
    return factor, factor


def shorter_side_geometry(
    size: tuple[int, int], width: int, height: int, crop_fraction: float
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resized size and centre-crop box for ``resize: shorter_side``.

    The image is scaled, keeping its aspect ratio, to just cover ``round(width / crop_fraction)`` x
    ``round(height / crop_fraction)``: the side that limits gets exactly that length, the other
    ``int(side * scale)`` (truncated). Then a ``width x height`` box is cut from the centre, offsets
    ``round((resized - crop) / 2)`` (Python's rounding, as torchvision). For a square crop this is
    exactly torchvision's ``Resize(round(size / crop_fraction))`` + ``CenterCrop(size)`` (224 / 0.875 ->
    256 -> 224), so results match its PIL pipeline pixel for pixel.
    """
    source_w, source_h = size
    cover_w, cover_h = round(width / crop_fraction), round(height / crop_fraction)
    if cover_w * source_h >= cover_h * source_w:  # width limits: cover_w / source_w >= cover_h / source_h
        resized = (cover_w, max(cover_h, int(source_h * cover_w / source_w)))
    else:
        resized = (max(cover_w, int(source_w * cover_h / source_h)), cover_h)
    left, top = round((resized[0] - width) / 2.0), round((resized[1] - height) / 2.0)
    return resized, (left, top, left + width, top + height)


def _composite_on_background(image: Image.Image, background: int) -> Image.Image:
    base_mode = "L" if image.mode == "LA" else "RGB"
    base = Image.new(base_mode, image.size, background if base_mode == "L" else (background,) * 3)
    base.paste(image.getchannel("L") if base_mode == "L" else image, mask=image.getchannel("A"))
    return base


def _resize(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    resample = cfg.resampling
    if cfg.resize == "exact":
        size = (cfg.width, cfg.height)
        return image if image.size == size else image.resize(size, resample)
    resized_size, box = shorter_side_geometry(image.size, cfg.width, cfg.height, cfg.crop_fraction)
    if image.size != resized_size:
        image = image.resize(resized_size, resample)
    return image if box == (0, 0, *image.size) else image.crop(box)


@functools.lru_cache(maxsize=256)
def _lookup_table(cfg: PreprocessConfig, invert: bool) -> np.ndarray:
    """(channels, 256) table: the model input value for each 8-bit level of each channel."""
    levels = np.arange(256, dtype=np.float64)
    levels = 255.0 - levels if invert else levels
    mean = np.broadcast_to(np.asarray(cfg.mean, dtype=np.float64), (cfg.channels,))[:, np.newaxis]
    std = np.broadcast_to(np.asarray(cfg.std, dtype=np.float64), (cfg.channels,))[:, np.newaxis]
    values = (levels * cfg.scale - mean) / std
    if cfg.dtype == "UINT8":
        values = np.clip(np.rint(values), 0, 255)
    table = values.astype(cfg.numpy_dtype)
    table.flags.writeable = False
    return table
