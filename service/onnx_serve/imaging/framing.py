"""Which way round the ink is, and framing a digit as MNIST was made (``center: mass``).

The model card's framing table (models/mnist-cnn/README.md, ``python -m training.framing_study``) measures
this code, so what it reports is what the server does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from onnx_serve.imaging.config import PreprocessConfig

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, the weights Pillow's convert("L") uses


def is_dark_on_light(pixels: np.ndarray) -> bool:
    """``invert: auto``'s rule for uint8 (H, W, C) pixels: the mean luma of the 1-pixel border (each pixel
    once) is above 127, as on paper; digits the model learnt from are light ink on a dark ground."""
    height, width, channels = pixels.shape
    if height >= 2 and width >= 2:
        border = np.concatenate((pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]))
    else:
        border = pixels.reshape(-1, channels)
    luma = border[:, 0] if channels == 1 else border @ _LUMA_WEIGHTS
    return float(luma.mean()) > 127


def frame_by_mass(grey: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Frames the digit in uint8 (H, W) ``grey`` as MNIST was made: ink made white on black (``cfg.invert``,
    ``auto`` by :func:`is_dark_on_light`), cropped to its bounding box (pixels above 20 % of the brightest),
    scaled with ``cfg.interpolation`` so the longer side fills 20/28 of the ``cfg.width`` x ``cfg.height``
    frame, and placed so its centre of mass is the frame's centre. Returns uint8 (H, W, 1), ink white, ready
    for scaling; a blank image gives a black frame."""
    invert = is_dark_on_light(grey[:, :, np.newaxis]) if cfg.invert == "auto" else cfg.invert
    frame = np.zeros((cfg.height, cfg.width, 1), dtype=np.uint8)
    # The ink is 255 - grey when inverted. Its bounding box comes from the brightest ink of each row and column,
    # so no image-sized copy, mask or index array is made (np.nonzero of a mask gives two int64s a pixel); only
    # the crop is ever inverted.
    if invert:
        row_ink = 255 - grey.min(axis=1).astype(np.int16)
        col_ink = 255 - grey.min(axis=0).astype(np.int16)
    else:
        row_ink, col_ink = grey.max(axis=1), grey.max(axis=0)
    brightest = int(row_ink.max())
    if brightest == 0:  # a blank image: nothing to frame
        return frame
    rows = np.flatnonzero(row_ink > 0.2 * brightest)  # ink above 20 % of the brightest is the digit
    cols = np.flatnonzero(col_ink > 0.2 * brightest)
    crop = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = 255 - crop if invert else np.ascontiguousarray(crop)
    box_side = max(1, round(min(cfg.width, cfg.height) * 20 / 28))
    scale = box_side / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    box = np.asarray(Image.fromarray(crop).resize(size, cfg.resampling))
    weights = box.astype(np.float64)
    mass = weights.sum()
    centre_y = (weights.sum(axis=1) @ np.arange(box.shape[0])) / mass if mass else (box.shape[0] - 1) / 2
    centre_x = (weights.sum(axis=0) @ np.arange(box.shape[1])) / mass if mass else (box.shape[1] - 1) / 2
    top = min(max(round((cfg.height - 1) / 2 - centre_y), 0), cfg.height - box.shape[0])
    left = min(max(round((cfg.width - 1) / 2 - centre_x), 0), cfg.width - box.shape[1])
    frame[top : top + box.shape[0], left : left + box.shape[1], 0] = box
    return frame
