"""Reduce before you frame: a large image is reduced (box averages, from the mode it was decoded in, a strip of
rows at a time) before it is converted, framed or resized. Ordinary images preprocess exactly as before, the
server's pipeline gives what ``preprocess(decode_image(...))`` gives, and the bundled model reads a digit the
same whether it is sent at 100 or 1,000 pixels."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from onnx_serve.imaging import (
    ImageLimits,
    PreprocessConfig,
    decode_and_preprocess,
    decode_image,
    frame_by_mass,
    parse_preprocess,
    preprocess,
    reduction_factor,
    to_standard_mode,
)
from onnx_serve.imaging import decode as decode_module
from onnx_serve.imaging import reduce as reduce_module
from onnx_serve.imaging.reduce import reduce_to_standard
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
MNIST_MODEL = ROOT / "models" / "mnist-cnn"
MNIST_DATA = Path(os.environ.get("ONNX_SERVE_MNIST_DATA", ROOT.parent / "shared" / "data" / "mnist"))
LIMITS = ImageLimits()
MASS = parse_preprocess({"color_mode": "L", "width": 28, "height": 28, "invert": "auto", "center": "mass"}, "test")
EXACT = PreprocessConfig(width=8, height=6)
SHORTER = PreprocessConfig(color_mode="RGB", resize="shorter_side", width=16, height=16, crop_fraction=0.875)
RNG_SEED = 7


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noisy(mode: str, size: tuple[int, int]) -> Image.Image:
    """An image of ``size`` in ``mode`` with every kind of sample the mode has (NaN and out-of-range ones too)."""
    rng = np.random.default_rng(RNG_SEED)
    width, height = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 80_000, (height, width), dtype=np.int32))
    if mode == "F":
        samples = rng.uniform(-20, 300, (height, width)).astype(np.float32)
        samples[::7, ::5] = np.nan
        samples[3::11, ::3] = np.inf
        return Image.fromarray(samples)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode in ("P", "PA"):
        palette = rgba.convert("RGB").quantize(16)
        palette.info["transparency"] = 3
        return palette if mode == "P" else palette.convert("PA")
    if mode == "L+transparency":
        grey = rgba.convert("L")
        grey.info["transparency"] = int(np.asarray(grey)[0, 0])
        return grey
    return rgba.convert(mode)


# ------------------------------------------------------------------------------------------ how far


def test_reduction_factor_leaves_ordinary_images_alone_and_bounds_large_ones() -> None:
    assert reduction_factor(MASS, (223, 223)) == (1, 1)  # under 8 x 28 on the longer side: framed as it is
    assert reduction_factor(MASS, (6324, 6324)) == (28, 28)  # a 40 M pixel page is framed from 226 x 226
    assert reduction_factor(MASS, (40_000, 1)) == (178, 178)  # one factor: the ink keeps its shape
    assert reduction_factor(EXACT, (63, 47)) == (1, 1)
    assert reduction_factor(EXACT, (64, 48)) == (2, 2)  # each axis kept at 4 times the input at least
    assert reduction_factor(EXACT, (6324, 10)) == (197, 1)
    assert reduction_factor(SHORTER, (143, 100)) == (1, 1)
    assert reduction_factor(SHORTER, (4000, 3000)) == (41, 41)  # one factor, so the geometry keeps its aspect
    assert reduction_factor(SHORTER, (40_000, 1000)) == (13, 13)


# ------------------------------------------------------------------------------------------ how


@pytest.mark.parametrize("mode", ["P", "PA", "LA", "RGBA", "I;16", "I", "F", "1", "CMYK", "L+transparency", "L",
                                  "RGB"])
def test_reducing_in_strips_is_exactly_reducing_the_converted_image(mode: str, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    monkeypatch.setattr(reduce_module, "STRIP_PIXELS", 7 * 50)  # strips of a few rows, many of them
    image = noisy(mode, (50, 37))
    for factor in [(3, 3), (4, 2), (1, 5), (50, 37)]:
        expected = to_standard_mode(image).reduce(factor)
        reduced = reduce_to_standard(image, factor)
        assert (reduced.mode, reduced.size) == (expected.mode, expected.size)
        np.testing.assert_array_equal(np.asarray(reduced), np.asarray(expected), err_msg=f"{mode} {factor}")


def test_wide_modes_convert_a_strip_at_a_time_to_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "STRIP_PIXELS", 40)
    sixteen = noisy("I;16", (17, 23))
    expected = (np.asarray(sixteen).astype(np.uint32) * 255 + 32767) // 65535
    np.testing.assert_array_equal(np.asarray(to_standard_mode(sixteen)), expected)
    floats = noisy("F", (17, 23))
    finite = np.nan_to_num(np.asarray(floats), nan=0.0, posinf=255.0, neginf=0.0)
    np.testing.assert_array_equal(np.asarray(to_standard_mode(floats)), np.rint(np.clip(finite, 0, 255)))


def framing_before_the_rewrite(grey: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """frame_by_mass as it was before it stopped making image-sized copies (255 - grey, np.nonzero)."""
    dark_on_light = float(np.concatenate((grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1])).mean()) > 127
    ink = 255 - grey if (dark_on_light if cfg.invert == "auto" else cfg.invert) else grey
    frame = np.zeros((cfg.height, cfg.width, 1), dtype=np.uint8)
    brightest = int(ink.max())
    if brightest == 0:
        return frame
    rows, cols = np.nonzero(ink > 0.2 * brightest)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    box = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, cfg.resampling))
    weights = box.astype(np.float64)
    mass = weights.sum()
    centre_y = (weights.sum(axis=1) @ np.arange(box.shape[0])) / mass if mass else (box.shape[0] - 1) / 2
    centre_x = (weights.sum(axis=0) @ np.arange(box.shape[1])) / mass if mass else (box.shape[1] - 1) / 2
    top = min(max(round((cfg.height - 1) / 2 - centre_y), 0), cfg.height - box.shape[0])
    left = min(max(round((cfg.width - 1) / 2 - centre_x), 0), cfg.width - box.shape[1])
    frame[top : top + box.shape[0], left : left + box.shape[1], 0] = box
    return frame


@pytest.mark.parametrize("invert", ["auto", True, False])
def test_framing_without_image_sized_copies_frames_exactly_as_before(invert: bool | str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    cfg = parse_preprocess({"color_mode": "L", "invert": invert, "center": "mass"}, "test")
    pages = [rng.integers(0, 256, (40, 31), dtype=np.uint8), np.full((9, 9), 255, np.uint8), np.zeros((5, 5), np.uint8)]
    for threshold_edge in (51, 52, 203, 204):  # ink right at 20 % of the brightest (255): 51 is not above it
        page = np.full((30, 30), 255 - threshold_edge if invert is not False else threshold_edge, np.uint8)
        page[10:20, 12:15] = 0 if invert is not False else 255
        pages.append(page)
    for _ in range(20):
        page = np.full((60, 45), 255, np.uint8)
        top, left = rng.integers(0, 40), rng.integers(0, 30)
        page[top : top + rng.integers(1, 20), left : left + rng.integers(1, 15)] = rng.integers(0, 200)
        pages.append(page if rng.random() < 0.5 else 255 - page)
    for page in pages:
        np.testing.assert_array_equal(frame_by_mass(page, cfg), framing_before_the_rewrite(page, cfg))


# ------------------------------------------------------------------------- the server's pipeline


def rotated(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image.convert("RGB"), "JPEG", quality=95, exif=exif.tobytes())


def exact_cases() -> dict[str, bytes]:
    page = Image.new("L", (300, 210), 255)
    ImageDraw.Draw(page).ellipse((60, 30, 200, 190), outline=0, width=18)
    return {
        "small PNG": encode(noisy("RGB", (30, 22))),
        "small JPEG": encode(noisy("RGB", (30, 22)), "JPEG"),
        "small rotated JPEG": rotated(noisy("RGB", (24, 12)), 6),
        "large grey PNG": encode(page),
        "large RGBA PNG": encode(page.convert("RGBA")),
        "large 16-bit PNG": encode(Image.fromarray(np.asarray(page).astype(np.uint16) * 257)),
        "large palette GIF": encode(page.convert("P"), "GIF", transparency=0),
        "large float TIFF": encode(Image.fromarray(np.asarray(page).astype(np.float32)), "TIFF"),
        "large WebP": encode(page.convert("RGB"), "WEBP", lossless=True),
        "large BMP": encode(page, "BMP"),
        "small JPEG, not drafted": encode(page.resize((120, 84)), "JPEG"),
    }


@pytest.mark.parametrize("cfg", [MASS, EXACT, SHORTER], ids=["mass", "exact", "shorter_side"])
def test_the_server_pipeline_gives_what_preprocess_of_decode_image_gives(cfg: PreprocessConfig) -> None:
    for name, data in exact_cases().items():
        expected = preprocess(decode_image(data, LIMITS), cfg)
        np.testing.assert_array_equal(decode_and_preprocess(data, LIMITS, cfg), expected, err_msg=name)


def test_a_large_jpeg_decoded_at_reduced_scale_is_close_to_the_full_decode() -> None:
    """libjpeg's DCT scaling stands in for the first factors of the box average: nearly the same input. (For
    ``center: mass`` a pixel's shift of the frame moves thin strokes a whole pixel: the bundled model's test
    below checks that case by what it reads.)"""
    page = Image.new("L", (1600, 1200), 230)
    ImageDraw.Draw(page).ellipse((500, 200, 1100, 1000), outline=20, width=90)
    for cfg in (EXACT, SHORTER):
        for data in (encode(page, "JPEG", quality=92), rotated(page, 8)):
            difference = np.abs(decode_and_preprocess(data, LIMITS, cfg) - preprocess(decode_image(data, LIMITS), cfg))
            assert difference.max() <= 12 / 255 and difference.mean() <= 3 / 255, cfg


# ------------------------------------------------------------------------------- the bundled model


def dark_on_light_digit(digit: np.ndarray, side: int, fmt: str = "PNG") -> bytes:
    """A white-on-black 28x28 MNIST digit, as a dark-on-light page of side x side (the digit 71 % of it)."""
    ink = Image.fromarray(digit).resize((round(side * 0.71),) * 2, Image.Resampling.BICUBIC)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(ink, ((side - ink.width) // 2, (side - ink.height) // 2))
    return encode(Image.fromarray(255 - np.asarray(canvas)), fmt)


def drawn_digits() -> tuple[np.ndarray, np.ndarray]:
    """A "1" (a bar) and a "0" (a ring), white on black, 28x28: the digits when MNIST's data is not here."""
    one, zero = Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 0)
    ImageDraw.Draw(one).rectangle((12, 4, 15, 23), fill=255)
    ImageDraw.Draw(zero).ellipse((7, 4, 20, 23), outline=255, width=3)
    return np.stack([np.asarray(one), np.asarray(zero)]), np.array([1, 0])


@pytest.mark.skipif(not (MNIST_MODEL / "1" / "model.onnx").is_file(), reason="models/mnist-cnn is not built")
def test_the_bundled_model_reads_digits_the_same_at_100_and_1000_pixels() -> None:
    import onnxruntime

    cfg = parse_preprocess(yaml.safe_load((MNIST_MODEL / "config.yaml").read_text())["preprocess"], "mnist-cnn")
    session = onnxruntime.InferenceSession(str(MNIST_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    digits, labels = drawn_digits()
    if MNIST_DATA.is_dir():
        from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

        dataset = load_mnist(MNIST_DATA)
        _, validation = stratified_split(dataset.labels, 1000, SPLIT_SEED)
        digits, labels = dataset.images[validation[:40]], dataset.labels[validation[:40]]

    def inputs(side: int, fmt: str = "PNG") -> np.ndarray:
        return np.stack([decode_and_preprocess(dark_on_light_digit(d, side, fmt), LIMITS, cfg) for d in digits])

    def read(batch: np.ndarray) -> np.ndarray:
        (scores,) = session.run(None, {"input": batch})
        return np.asarray(scores).argmax(axis=1)

    small = inputs(100)  # not reduced: exactly what preprocess made before reduction existed
    np.testing.assert_array_equal(small, np.stack([preprocess(decode_image(dark_on_light_digit(d, 100), LIMITS),
                                                              cfg) for d in digits]))
    large, large_jpeg = inputs(1000), inputs(1000, "JPEG")  # reduced by 4; the JPEG drafted at 1/2 first
    assert np.abs(large - small).mean() <= 0.02
    assert np.array_equal(read(large), read(small))
    assert np.mean(read(large_jpeg) == read(small)) >= 0.95
    assert np.mean(read(large) == labels) >= 0.95
