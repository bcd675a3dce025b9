"""frame_by_mass, the public MNIST framing that `center: mass` and the model card's framing study both use."""

from __future__ import annotations

import numpy as np
from onnx_serve.imaging import PreprocessConfig, frame_by_mass, preprocess
from PIL import Image

MASS = PreprocessConfig(center="mass", invert="auto", scale=1.0)


def dark_digit_on_paper() -> np.ndarray:
    """A 100x100 white page with a black 10x40 bar whose centre is at (row 30, column 25)."""
    page = np.full((100, 100), 255, dtype=np.uint8)
    page[10:50, 20:30] = 0
    return page


def test_the_digit_is_made_white_on_black_scaled_to_20_pixels_and_centred_by_mass() -> None:
    frame = frame_by_mass(dark_digit_on_paper(), MASS)
    assert frame.shape == (28, 28, 1) and frame.dtype == np.uint8
    rows, _ = np.nonzero(frame[:, :, 0] > 127)
    assert rows.max() - rows.min() + 1 == 20  # the longer side fills 20 of the 28 pixels
    weights = frame[:, :, 0].astype(np.float64)
    centre = (weights.sum(axis=1) @ np.arange(28) / weights.sum(), weights.sum(axis=0) @ np.arange(28) / weights.sum())
    assert np.allclose(centre, (13.5, 13.5), atol=0.5)
    assert frame[0, 0, 0] == 0  # the paper is black now


def test_light_ink_on_dark_is_taken_as_it_is_and_a_blank_page_gives_a_black_frame() -> None:
    assert np.array_equal(frame_by_mass(255 - dark_digit_on_paper(), MASS), frame_by_mass(dark_digit_on_paper(), MASS))
    assert not frame_by_mass(np.full((50, 50), 255, dtype=np.uint8), MASS).any()


def test_preprocess_with_center_mass_feeds_the_frame() -> None:
    page = dark_digit_on_paper()
    out = preprocess(Image.fromarray(page), MASS)
    assert np.array_equal(out, frame_by_mass(page, MASS).transpose(2, 0, 1).astype(np.float32))
