"""The Classify core: config validation, safe decoding, exact preprocessing, top-k.

Images are drawn with Pillow in the test, pixel by pixel where exact values matter.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_serve.core.errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServeError,
    Unavailable,
)
from onnx_serve.imaging import (
    DecodingBudget,
    ImageLimits,
    PostprocessConfig,
    Prediction,
    PreprocessConfig,
    decode_and_preprocess,
    decode_image,
    image_from_pixels,
    load_labels,
    parse_limits,
    parse_postprocess,
    parse_preprocess,
    preprocess,
    shorter_side_geometry,
    to_standard_mode,
    top_k,
)
from PIL import Image, PngImagePlugin

LIMITS = ImageLimits()
WHERE = "models/m/config.yaml"
# No normalisation: the output values are the 8-bit pixels themselves, as floats.
RAW = PreprocessConfig(color_mode="RGB", width=2, height=2, invert=False, scale=1.0, layout="NHWC")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb(rows: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.array(rows, dtype=np.uint8))


def three_by_two() -> Image.Image:
    return rgb([[(255, 0, 0), (0, 255, 0), (0, 0, 0)], [(0, 0, 0), (0, 0, 0), (0, 0, 255)]])


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit grey) but that carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))  # fmt: skip


def refused(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_image(data, limits)
    return str(info.value)


# --------------------------------------------------------------------------------------------- errors


def test_error_types_carry_grpc_status_names() -> None:
    assert issubclass(ConfigError, ValueError)
    expected = {
        InvalidArgument: "INVALID_ARGUMENT", NotFound: "NOT_FOUND", Unavailable: "UNAVAILABLE",
        ResourceExhausted: "RESOURCE_EXHAUSTED", DeadlineExceeded: "DEADLINE_EXCEEDED",
    }  # fmt: skip
    for error, name in expected.items():
        assert issubclass(error, ServeError)
        assert error.status_name == name
        assert error("x").status_name == name


# --------------------------------------------------------------------------------------------- config


def test_absent_sections_give_the_contract_defaults() -> None:
    assert parse_preprocess(None, WHERE) == parse_preprocess({}, WHERE) == PreprocessConfig()
    cfg = PreprocessConfig()
    assert (cfg.color_mode, cfg.background, cfg.resize, cfg.width, cfg.height) == ("L", 255, "exact", 28, 28)
    assert (cfg.interpolation, cfg.invert, cfg.layout, cfg.dtype) == ("bilinear", "auto", "NCHW", "FP32")
    assert cfg.scale == pytest.approx(0.00392156862745098)
    assert (cfg.mean, cfg.std, cfg.crop_fraction) == ((0.0,), (1.0,), 1.0)
    assert parse_postprocess(None, WHERE) == PostprocessConfig(softmax=False, top_k=5)
    assert parse_limits({}, WHERE) == ImageLimits(10485760, 40000000, 64)


def test_full_imagenet_style_config_parses() -> None:
    raw = {
        "color_mode": "RGB", "background": 0, "resize": "shorter_side", "width": 224, "height": 224,
        "crop_fraction": 0.875, "interpolation": "bicubic", "invert": False, "scale": 1 / 255,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NHWC", "dtype": "FP16",
    }  # fmt: skip
    cfg = parse_preprocess(raw, WHERE)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.output_shape == (224, 224, 3) and cfg.numpy_dtype == np.float16
    assert parse_preprocess({"mean": [0], "std": [2]}, WHERE).std == (2.0,)  # ints are numbers
    assert parse_preprocess({"dtype": "UINT8", "scale": 1, "invert": True}, WHERE).dtype == "UINT8"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour_mode": "L"}, "preprocess.colour_mode: unknown key"),
        ({"color_mode": "rgb"}, "preprocess.color_mode: expected one of L, RGB, BGR"),
        ({"mean": [0.5, 0.5]}, "preprocess.mean: expected a list of 1 finite numbers"),
        ({"color_mode": "RGB", "mean": [0.5, 0.5]}, "preprocess.mean: expected a list of 1 or 3"),
        ({"mean": 0.5}, "preprocess.mean: expected a list"),
        ({"mean": ["0"]}, "preprocess.mean: expected"),
        ({"mean": [float("nan")]}, "preprocess.mean: expected"),
        ({"color_mode": "BGR", "std": [1, 0, 1]}, "preprocess.std: expected a list of 1 or 3 finite numbers, none 0"),
        ({"resize": "shorter_side", "crop_fraction": 0}, "preprocess.crop_fraction: expected a number in (0, 1]"),
        ({"resize": "shorter_side", "crop_fraction": 1.5}, "preprocess.crop_fraction"),
        ({"crop_fraction": 0.875}, "preprocess.crop_fraction: expected 1 with resize: exact"),
        ({"width": 0}, "preprocess.width: expected an integer >= 1, got int 0"),
        ({"height": "28"}, "preprocess.height: expected an integer >= 1, got str '28'"),
        ({"width": True}, "preprocess.width: expected an integer"),
        ({"width": 2.5}, "preprocess.width"),
        ({"background": 256}, "preprocess.background: expected an integer in 0..255"),
        ({"resize": "crop"}, "preprocess.resize: expected one of exact, shorter_side"),
        ({"interpolation": "cubic"}, "preprocess.interpolation: expected one of nearest, bilinear, bicubic"),
        ({"invert": "yes"}, "preprocess.invert: expected true, false or auto"),
        ({"scale": 0}, "preprocess.scale: expected a finite number > 0"),
        ({"scale": None}, "preprocess.scale: expected a finite number > 0, got NoneType None"),
        ({"layout": "CHW"}, "preprocess.layout: expected one of NCHW, NHWC"),
        ({"dtype": "FP64"}, "preprocess.dtype: expected one of FP32, FP16, UINT8"),
        ({"dtype": "UINT8"}, "preprocess.dtype: UINT8 feeds the 0..255 pixels themselves"),
        ([1, 2], "preprocess: expected a mapping, got list"),
    ],
)
def test_preprocess_config_errors_name_the_file_and_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_preprocess(raw, WHERE)
    assert str(info.value).startswith(f"{WHERE}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("parse", "raw", "message"),
    [
        (parse_postprocess, {"top_k": 0}, "postprocess.top_k: expected an integer >= 1"),
        (parse_postprocess, {"softmax": "true"}, "postprocess.softmax: expected true or false"),
        (parse_postprocess, {"topk": 3}, "postprocess.topk: unknown key (allowed: softmax, top_k)"),
        (parse_limits, {"max_image_bytes": -1}, "limits.max_image_bytes: expected an integer >= 1"),
        (parse_limits, {"max_image_pixels": 10**9}, "limits.max_image_pixels: expected an integer in 1..89478485"),
        (parse_limits, {"max_images": 3}, "limits.max_images: unknown key"),
        (parse_limits, {"max_decoded_bytes": 0}, "limits.max_decoded_bytes: expected an integer >= 1"),
        (parse_limits, "big", "limits: expected a mapping, got str 'big'"),
    ],
)
def test_postprocess_and_limits_errors(parse: Callable[[object, str], object], raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^models/m/config\.yaml: ") as info:
        parse(raw, WHERE)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("BMP", {}), ("GIF", {}), ("WEBP", {"lossless": True}), ("TIFF", {}),
     ("TIFF", {"compression": "tiff_lzw"})],
)  # fmt: skip
def test_lossless_formats_decode_exactly(fmt: str, options: dict) -> None:
    decoded = decode_image(encode(three_by_two(), fmt, **options), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(three_by_two()))


def test_jpeg_decodes() -> None:
    flat = Image.new("RGB", (16, 8), (200, 40, 90))
    decoded = decode_image(encode(flat, "JPEG", quality=95), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (16, 8)
    assert np.abs(np.asarray(decoded).astype(int) - (200, 40, 90)).max() <= 3


def test_exif_orientation_is_applied() -> None:
    # 16x8, left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to show".
    image = Image.new("RGB", (16, 8), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", quality=95, exif=exif.tobytes()), LIMITS)
    assert decoded.size == (8, 16)
    top, bottom = np.asarray(decoded)[2, 4], np.asarray(decoded)[13, 4]
    assert top[0] > 200 and top[2] < 50  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    samples = np.array([[0, 257, 65535, 1000]], dtype=np.uint16)
    source = Image.fromarray(samples)
    assert source.mode == "I;16"
    decoded = decode_image(encode(source, "PNG"), LIMITS)
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), [[0, 1, 255, 4]])  # round(v * 255 / 65535)


def test_int_and_float_modes_convert() -> None:
    as_int = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(to_standard_mode(as_int)), [[0, 255, 255, 0]])
    as_float = Image.fromarray(np.array([[-1, 0.4, 127.6, 300, np.nan]], dtype=np.float32))
    assert as_float.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_standard_mode(as_float)), [[0, 0, 128, 255, 0]])


def test_cmyk_jpeg_becomes_rgb() -> None:
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    decoded = decode_image(encode(red, "JPEG", quality=95), LIMITS)
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded)[4, 4].astype(int) - (255, 0, 0)).max() <= 3


def test_palette_png_with_transparency_gets_the_background() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    decoded = decode_image(encode(palette, "PNG", transparency=0), LIMITS)
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(decoded), [[(255, 0, 0, 0), (0, 0, 255, 255)]])
    cfg = PreprocessConfig(color_mode="RGB", width=2, height=1, invert=False, scale=1.0, background=128)
    np.testing.assert_array_equal(preprocess(decoded, cfg)[:, 0, :], [[128, 0], [128, 0], [128, 255]])
    opaque = decode_image(encode(palette, "PNG"), LIMITS)
    assert opaque.mode == "RGB"


def test_single_transparent_colour_in_grey_png_becomes_alpha() -> None:
    grey = Image.fromarray(np.array([[10, 20]], dtype=np.uint8))
    decoded = decode_image(encode(grey, "PNG", transparency=10), LIMITS)
    assert decoded.mode == "LA"
    np.testing.assert_array_equal(np.asarray(decoded), [[(10, 0), (20, 255)]])


def test_bilevel_and_alpha_modes() -> None:
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    decoded = decode_image(encode(bilevel, "PNG"), LIMITS)
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), [[0, 255]])
    for mode in ("LA", "RGBA"):
        assert decode_image(encode(Image.new(mode, (2, 2)), "PNG"), LIMITS).mode == mode


@pytest.mark.parametrize(("fmt", "options"), [("GIF", {"duration": 50, "loop": 0}), ("WEBP", {"lossless": True})])
def test_animated_images_give_the_first_frame(fmt: str, options: dict) -> None:
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue], **options)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = decode_image(data, LIMITS)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB"))[0, 0], (255, 0, 0))


def test_big_text_chunk_is_ignored_and_compressed_text_bomb_refused() -> None:
    tiny = Image.new("L", (4, 4), 7)
    plain = PngImagePlugin.PngInfo()
    plain.add_text("comment", "x" * 3_000_000)
    assert np.asarray(decode_image(encode(tiny, "PNG", pnginfo=plain), LIMITS))[0, 0] == 7
    bomb = PngImagePlugin.PngInfo()
    bomb.add_text("comment", "x" * 20_000_000, zip=True)  # ~20 kB compressed, 20 MB inflated
    data = encode(tiny, "PNG", pnginfo=bomb)
    assert len(data) < 100_000
    assert refused(data) == "image metadata too large (PNG text or profile chunks)"


def test_decompression_bomb_is_refused_from_the_header_quickly() -> None:
    started = time.perf_counter()
    message = refused(png_with_header(50_000, 50_000))
    assert message == "image is 2500000000 pixels, above the limit of 40000000 (decompression bomb)"
    assert refused(png_with_header(7_000, 7_000)) == "image is 7000x7000 = 49000000 pixels, above the limit of 40000000"
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("action", ["error", "ignore"])
def test_pillow_bomb_warning_range_is_refused_whatever_the_warning_filter(action: str) -> None:
    # 100M pixels: above Pillow's warning threshold (89M), below its error threshold (179M).
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)  # type: ignore[call-overload]
        assert "above the limit of 40000000" in refused(png_with_header(10_000, 10_000))


def test_pixel_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (20, 10)), "PNG")
    assert refused(data, ImageLimits(max_image_pixels=199)) == "image is 20x10 = 200 pixels, above the limit of 199"
    assert decode_image(data, ImageLimits(max_image_pixels=200)).size == (20, 10)


def test_byte_limit_is_checked_before_decoding() -> None:
    data = encode(Image.new("RGB", (20, 10)), "PNG")
    assert refused(data, ImageLimits(max_image_bytes=len(data) - 1)) == (
        f"image is {len(data)} bytes, above the limit of {len(data) - 1}"
    )
    assert refused(b"x" * 101, ImageLimits(max_image_bytes=100)) == "image is 101 bytes, above the limit of 100"


def test_truncated_images_are_refused() -> None:
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    png, jpeg = encode(noise, "PNG"), encode(noise, "JPEG")
    assert refused(png[: len(png) // 2]) == "truncated image data (PNG)"
    assert refused(jpeg[: len(jpeg) // 2]) == "truncated image data (JPEG)"
    assert refused(png[:20]) == "truncated image data (PNG)"  # inside the IHDR chunk
    assert refused(png[:12]) == "truncated or corrupt PNG header"
    assert refused(b"GIF89a") == "truncated or corrupt GIF header"


def test_corrupt_pixel_data_is_refused() -> None:
    png = bytearray(encode(Image.effect_noise((64, 64), 60), "PNG"))
    idat = png.index(b"IDAT") + 8
    png[idat : idat + 200] = bytes(200)  # the zlib stream is now garbage; the CRC no longer matches
    message = refused(bytes(png))
    assert message.startswith(("corrupt PNG image data", "truncated image data")), message


@pytest.mark.parametrize(
    "data",
    [b"\x00" * 64, bytes(range(256)), b"hello, world", b"P6\n2 2\n255\n" + bytes(12), b"<svg></svg>"],
)
def test_unrecognised_bytes_are_refused(data: bytes) -> None:
    assert refused(data) == "not a recognised image format (supported: JPEG, PNG, BMP, GIF, WEBP, TIFF)"


def test_other_pillow_formats_are_not_tried() -> None:
    for fmt in ("PPM", "ICO", "TGA"):
        assert refused(encode(Image.new("RGB", (4, 4)), fmt)).startswith("not a recognised image format")


def test_empty_image_is_refused() -> None:
    assert refused(b"") == "image is empty (0 bytes)"


def test_image_from_pixels() -> None:
    data = bytes(range(2 * 3 * 3))
    image = image_from_pixels(data, 3, 2, 3, LIMITS)
    assert image.mode == "RGB" and image.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(image), np.arange(18).reshape(2, 3, 3))
    assert image_from_pixels(bytearray(4), 2, 2, 1, LIMITS).mode == "L"
    assert image_from_pixels(memoryview(bytes(16)), 2, 2, 4, LIMITS).mode == "RGBA"
    with pytest.raises(InvalidArgument, match=r"^raw pixels: 3x2x3 needs 18 bytes, got 17$"):
        image_from_pixels(data[:-1], 3, 2, 3, LIMITS)
    with pytest.raises(InvalidArgument, match="channels must be 1, 3 or 4, got 2"):
        image_from_pixels(bytes(12), 3, 2, 2, LIMITS)
    with pytest.raises(InvalidArgument, match="width must be a positive integer, got 0"):
        image_from_pixels(b"", 0, 2, 3, LIMITS)
    with pytest.raises(InvalidArgument, match="3x2 = 6 pixels, above the limit of 5"):
        image_from_pixels(data, 3, 2, 3, ImageLimits(max_image_pixels=5))


# ------------------------------------------------------------------------------------------ transform


def test_rgb_and_bgr_channel_order() -> None:
    image = rgb([[(1, 2, 3), (4, 5, 6)], [(7, 8, 9), (10, 11, 12)]])
    out = preprocess(image, RAW)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(image))
    bgr = preprocess(image, replace(RAW, color_mode="BGR"))
    np.testing.assert_array_equal(bgr, np.asarray(image)[:, :, ::-1])


def test_grey_mode_uses_pillows_luma_and_grey_input_fills_rgb() -> None:
    image = rgb([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (90, 120, 200)]])
    grey = preprocess(image, replace(RAW, color_mode="L"))
    assert grey.shape == (2, 2, 1)
    np.testing.assert_array_equal(grey[:, :, 0], np.asarray(image.convert("L")))
    expected = [[76, 150], [29, 0.299 * 90 + 0.587 * 120 + 0.114 * 200]]
    np.testing.assert_allclose(grey[:, :, 0], expected, atol=0.5)
    from_grey = preprocess(image.convert("L"), RAW)
    for channel in range(3):
        np.testing.assert_array_equal(from_grey[:, :, channel], grey[:, :, 0])


@pytest.mark.parametrize("background", [0, 255, 100])
def test_alpha_is_composited_onto_the_background(background: int) -> None:
    alphas = [[0, 255], [128, 64]]
    colour = np.array([200, 100, 50])
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[:, :, :3], rgba[:, :, 3] = colour, alphas
    out = preprocess(Image.fromarray(rgba), replace(RAW, background=background))
    a = np.array(alphas)[:, :, np.newaxis]
    np.testing.assert_array_equal(out, np.rint((colour * a + background * (255 - a)) / 255))
    assert (out[0, 0] == background).all() and (out[0, 1] == colour).all()
    la = np.stack([np.full((2, 2), 200, np.uint8), np.array(alphas, np.uint8)], axis=-1)
    grey = preprocess(Image.fromarray(la), replace(RAW, color_mode="L", background=background))
    np.testing.assert_array_equal(grey[:, :, 0], np.rint((200 * a[:, :, 0] + background * (255 - a[:, :, 0])) / 255))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_exact_resize_matches_pillow(interpolation: str) -> None:
    image = Image.effect_noise((9, 7), 80).convert("RGB")
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}  # fmt: skip
    cfg = replace(RAW, width=5, height=3, interpolation=interpolation)
    out = preprocess(image, cfg)
    assert out.shape == (3, 5, 3)
    np.testing.assert_array_equal(out, np.asarray(image.resize((5, 3), filters[interpolation])))


def test_exact_resize_to_the_same_size_is_identity() -> None:
    image = Image.effect_noise((4, 3), 80).convert("RGB")
    np.testing.assert_array_equal(preprocess(image, replace(RAW, width=4, height=3)), np.asarray(image))


def test_shorter_side_geometry_follows_torchvision() -> None:
    # Resize(256) + CenterCrop(224): landscape 640x480 -> 341x256, crop left round(58.5) = 58.
    assert shorter_side_geometry((640, 480), 224, 224, 0.875) == ((341, 256), (58, 16, 282, 240))
    assert shorter_side_geometry((480, 640), 224, 224, 0.875) == ((256, 341), (16, 58, 240, 282))
    assert shorter_side_geometry((300, 300), 224, 224, 1.0) == ((224, 224), (0, 0, 224, 224))
    # Non-square crop: the image must cover 40x20; for a 100x100 image height does not limit.
    assert shorter_side_geometry((100, 100), 40, 20, 1.0) == ((40, 40), (0, 10, 40, 30))
    assert shorter_side_geometry((100, 10), 40, 20, 1.0) == ((200, 20), (80, 0, 120, 20))


def test_shorter_side_resize_then_centre_crop_matches_pillow() -> None:
    image = Image.effect_noise((40, 30), 80).convert("RGB")
    cfg = replace(RAW, resize="shorter_side", width=8, height=8, crop_fraction=0.5, interpolation="bicubic")
    resized, box = shorter_side_geometry(image.size, 8, 8, 0.5)
    assert resized == (21, 16) and box == (6, 4, 14, 12)
    expected = image.resize(resized, Image.Resampling.BICUBIC).crop(box)
    np.testing.assert_array_equal(preprocess(image, cfg), np.asarray(expected))


def test_centre_crop_picks_the_middle_pixels() -> None:
    grid = np.arange(6 * 4, dtype=np.uint8).reshape(4, 6)  # 6 wide, 4 high, every pixel distinct
    cfg = PreprocessConfig(resize="shorter_side", width=2, height=2, crop_fraction=0.5, invert=False,
                           scale=1.0, interpolation="nearest", layout="NHWC")  # fmt: skip
    # must cover 4x4: height limits, 6x4 needs no resize; box (2, 1, 4, 3)
    np.testing.assert_array_equal(preprocess(Image.fromarray(grid), cfg)[:, :, 0], grid[1:3, 2:4])


def _digit(dark_on_light: bool, mode: str = "L") -> Image.Image:
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    image = Image.new("L", (6, 6), paper)
    image.paste(ink, (2, 1, 4, 5))  # a thick vertical stroke
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_invert_auto_detects_dark_on_light(mode: str) -> None:
    cfg = PreprocessConfig(width=6, height=6, invert="auto", color_mode="L")
    from_dark_ink = preprocess(_digit(dark_on_light=True, mode=mode), cfg)
    from_light_ink = preprocess(_digit(dark_on_light=False, mode=mode), cfg)
    np.testing.assert_array_equal(from_dark_ink, from_light_ink)  # both: light stroke on black
    assert from_light_ink[0, 0, 0] == 0.0 and from_light_ink[0, 2, 2] == 1.0


def test_invert_true_and_false_are_unconditional() -> None:
    image = _digit(dark_on_light=False)
    plain = preprocess(image, PreprocessConfig(width=6, height=6, invert=False))
    inverted = preprocess(image, PreprocessConfig(width=6, height=6, invert=True))
    np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-7)
    np.testing.assert_array_equal(plain[0], np.asarray(image) / np.float32(255))


def test_invert_auto_threshold_is_border_mean_above_127() -> None:
    cfg = PreprocessConfig(width=3, height=3, invert="auto", scale=1.0, layout="NHWC")
    border_127 = Image.new("L", (3, 3), 127)
    border_128 = Image.new("L", (3, 3), 128)
    assert preprocess(border_127, cfg)[0, 0, 0] == 127  # not above 127: kept
    assert preprocess(border_128, cfg)[0, 0, 0] == 255 - 128  # above: inverted
    centre_only = Image.new("L", (3, 3), 0)
    centre_only.putpixel((1, 1), 255)  # the centre is not border
    assert preprocess(centre_only, cfg)[1, 1, 0] == 255


def test_scale_mean_std_arithmetic() -> None:
    image = rgb([[(10, 20, 30)]])
    cfg = PreprocessConfig(color_mode="RGB", width=1, height=1, invert=False, scale=0.5,
                           mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0), layout="NHWC")  # fmt: skip
    np.testing.assert_array_equal(preprocess(image, cfg)[0, 0], [2.0, 2.0, 1.5])
    one_mean = replace(cfg, mean=(5.0,), std=(0.5,))
    np.testing.assert_array_equal(preprocess(image, one_mean)[0, 0], [0.0, 10.0, 20.0])
    imagenet = replace(cfg, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    expected = ((np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    np.testing.assert_array_equal(preprocess(image, imagenet)[0, 0], expected)


def test_bgr_mean_applies_to_the_fed_channel_order() -> None:
    image = rgb([[(10, 20, 30)]])
    cfg = PreprocessConfig(color_mode="BGR", width=1, height=1, invert=False, scale=1.0,
                           mean=(1.0, 2.0, 3.0), layout="NHWC")  # fmt: skip
    np.testing.assert_array_equal(preprocess(image, cfg)[0, 0], [29.0, 18.0, 7.0])


def test_nchw_is_the_transpose_of_nhwc() -> None:
    image = Image.effect_noise((5, 4), 80).convert("RGB")
    nhwc = preprocess(image, replace(RAW, width=5, height=4, color_mode="BGR", mean=(3.0, 2.0, 1.0)))
    nchw = preprocess(image, replace(RAW, width=5, height=4, color_mode="BGR", mean=(3.0, 2.0, 1.0), layout="NCHW"))
    assert nhwc.shape == (4, 5, 3) and nchw.shape == (3, 4, 5)
    np.testing.assert_array_equal(nchw, nhwc.transpose(2, 0, 1))
    assert nchw.flags.c_contiguous and nhwc.flags.c_contiguous and nchw.flags.writeable
    grey = preprocess(image, PreprocessConfig(width=5, height=4))
    assert grey.shape == (1, 4, 5) == PreprocessConfig(width=5, height=4).output_shape


def test_dtypes() -> None:
    image = rgb([[(0, 128, 255)]])
    fp16 = preprocess(image, replace(RAW, width=1, height=1, scale=1 / 255, dtype="FP16"))
    assert fp16.dtype == np.float16
    np.testing.assert_array_equal(fp16[0, 0], np.array([0, 128 / 255, 1], dtype=np.float16))
    uint8 = preprocess(image, replace(RAW, width=1, height=1, dtype="UINT8", invert=True))
    assert uint8.dtype == np.uint8
    np.testing.assert_array_equal(uint8[0, 0], [255, 127, 0])


def test_decode_and_preprocess_in_parallel_threads_match_sequential() -> None:
    cfg = PreprocessConfig(color_mode="RGB", resize="shorter_side", width=16, height=16, crop_fraction=0.875)
    images = [encode(Image.effect_noise((64 + i, 48), 40 + i).convert("RGB"), "PNG") for i in range(8)]
    sequential = [preprocess(decode_image(data, LIMITS), cfg) for data in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda data: preprocess(decode_image(data, LIMITS), cfg), images * 4))
    for index, result in enumerate(parallel):
        np.testing.assert_array_equal(result, sequential[index % len(images)])


def test_raw_pixels_preprocess_like_the_same_encoded_image() -> None:
    image = Image.effect_noise((10, 7), 60).convert("RGB")
    cfg = PreprocessConfig(color_mode="BGR", width=5, height=5, invert="auto")
    from_raw = preprocess(image_from_pixels(image.tobytes(), 10, 7, 3, LIMITS), cfg)
    np.testing.assert_array_equal(from_raw, preprocess(decode_image(encode(image, "PNG"), LIMITS), cfg))


def test_preprocess_is_deterministic_and_leaves_the_input_alone() -> None:
    image = Image.effect_noise((33, 21), 80).convert("RGBA")
    before = np.asarray(image).copy()
    cfg = PreprocessConfig(color_mode="RGB", resize="shorter_side", width=8, height=8, crop_fraction=0.875)
    np.testing.assert_array_equal(preprocess(image, cfg), preprocess(image, cfg))
    np.testing.assert_array_equal(np.asarray(image), before)


# ---------------------------------------------------------------------------------------- postprocess


def test_top_k_without_softmax_keeps_raw_scores() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    result = top_k(scores, 2, softmax=False, labels=["zero", "one", "two"])
    assert result == [
        [Prediction("one", 1, float(np.float32(0.7))), Prediction("two", 2, float(np.float32(0.2)))],
        [Prediction("zero", 0, float(np.float32(0.5))), Prediction("one", 1, float(np.float32(0.3)))],
    ]


def test_top_k_softmax_is_stable_for_large_logits() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0]], dtype=np.float32)
    (row,) = top_k(logits, 3, softmax=True, labels=None)
    expected = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
    assert [p.index for p in row] == [1, 0, 2]
    assert [p.score for p in row] == pytest.approx(expected.tolist(), rel=1e-12)
    assert sum(p.score for p in row) == pytest.approx(1.0)


def test_top_k_ties_keep_the_lower_index_first() -> None:
    (row,) = top_k(np.array([[0.5, 0.9, 0.5, 0.9, np.nan]]), 5, softmax=False)
    assert [p.index for p in row] == [1, 3, 0, 2, 4]


def test_top_k_ties_straddling_the_kth_place_and_many_classes() -> None:
    probabilities = np.zeros((1, 100), dtype=np.float32)
    probabilities[0, [70, 40, 90]] = [0.5, 0.3, 0.2]  # a confident model: the rest underflowed to 0
    (row,) = top_k(probabilities, 5, softmax=False)
    assert [p.index for p in row] == [70, 40, 90, 0, 1]
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float16, np.uint8, np.int32):
        scores = rng.integers(0, 4, size=(64, 200)).astype(dtype)  # lots of ties everywhere
        got = [[p.index for p in row] for row in top_k(scores, 7, softmax=False)]
        reference = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :7]
        assert got == reference.tolist()


def test_top_k_labels_missing_or_short_use_the_index() -> None:
    (row,) = top_k(np.array([[0.1, 0.2, 0.3]]), 10, softmax=False, labels=["a"])
    assert [(p.label, p.index) for p in row] == [("2", 2), ("1", 1), ("a", 0)]  # k clipped to 3
    (row,) = top_k(np.array([[[[0.1]], [[0.9]]]]), 1, softmax=False)  # (N, C, 1, 1)
    assert row == [Prediction("1", 1, 0.9)]


def test_top_k_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="top_k must be a positive integer, got 0"):
        top_k(np.zeros((1, 3)), 0, softmax=False)
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        top_k(np.zeros(3), 1, softmax=False)
    assert len(top_k(np.zeros((2, 3)), np.int64(2), softmax=True)[1]) == 2


def test_load_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("\ufeffzero\n  one \r\ntwo\n\n\n", encoding="utf-8")
    assert load_labels(path) == ["zero", "one", "two"]
    path.write_text("\n \n")
    with pytest.raises(ConfigError, match="labels file is empty"):
        load_labels(path)
    path.write_text("a\n\nc\n")
    with pytest.raises(ConfigError, match="line 2 is blank"):
        load_labels(path)
    with pytest.raises(ConfigError, match="cannot read labels"):
        load_labels(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------- property


def _samples() -> list[bytes]:
    image = Image.effect_noise((12, 9), 60).convert("RGB")
    return [encode(image, "PNG"), encode(image, "JPEG"), encode(image, "BMP"), encode(image, "GIF"),
            encode(image, "WEBP"), encode(image, "TIFF"), encode(image.convert("RGBA"), "PNG")]  # fmt: skip


SAMPLES = _samples()
FUZZ_LIMITS = ImageLimits(max_image_pixels=250_000)
FUZZ_CFG = PreprocessConfig(color_mode="RGB", resize="shorter_side", width=8, height=8, crop_fraction=0.875)


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF/EXIF it survives
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_images())
def test_any_bytes_either_preprocess_or_raise_invalid_argument(data: bytes) -> None:
    try:
        image = decode_image(data, FUZZ_LIMITS)
    except InvalidArgument:
        return
    out = preprocess(image, FUZZ_CFG)
    assert out.shape == (3, 8, 8) and np.isfinite(out).all()


def _pipeline_samples() -> list[bytes]:
    """Images that take each of the server pipeline's own paths: reduced, drafted, progressive, EXIF-rotated,
    16-bit, TIFF strips, palette with transparency."""
    page = Image.effect_noise((64, 48), 60)
    exif = Image.Exif()
    exif[0x0112] = 6
    return [encode(page, "JPEG"), encode(page.convert("RGB"), "JPEG", progressive=True),
            encode(page, "JPEG", exif=exif.tobytes()), encode(page.convert("I;16"), "PNG"),
            encode(page.convert("RGB"), "TIFF", compression="tiff_lzw"), encode(page.convert("F"), "TIFF"),
            encode(page.convert("P"), "PNG", transparency=3), encode(page.convert("RGBA"), "WEBP")]  # fmt: skip


PIPELINE_SAMPLES = SAMPLES + _pipeline_samples()


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(damaged_images(), st.sampled_from(PIPELINE_SAMPLES).flatmap(
    lambda sample: st.builds(lambda cut, at, value: bytes(sample[:at]) + bytes([value]) + bytes(sample[at + 1:cut]),
                             st.integers(1, len(sample)), st.integers(0, len(sample) - 1), st.integers(0, 255)))))
def test_the_server_pipeline_either_preprocesses_or_raises_invalid_argument(data: bytes) -> None:
    budget = DecodingBudget(64 * 1024 * 1024)
    for cfg in (FUZZ_CFG, replace(FUZZ_CFG, color_mode="L", resize="exact", center="mass", width=28, height=28)):
        try:
            out = decode_and_preprocess(data, FUZZ_LIMITS, cfg, budget)
        except InvalidArgument:
            continue
        finally:
            assert budget.in_use_bytes == 0
        assert out.shape == cfg.output_shape and np.isfinite(out).all()


# ------------------------------------------------------------------------------------ center: mass


def _mass_config(**overrides: object) -> PreprocessConfig:
    return parse_preprocess({"color_mode": "L", "width": 28, "height": 28, "invert": "auto", "center": "mass",
                             **overrides}, "test")


def test_center_mass_frames_an_off_centre_digit_like_mnist() -> None:
    canvas = Image.new("L", (100, 100), 255)  # dark ink on light paper, small and off-centre
    canvas.paste(0, (10, 20, 22, 50))  # a 12x30 bar
    out = preprocess(canvas, _mass_config())[0]
    rows, cols = np.nonzero(out > 0.2)
    assert max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == 20  # longer side fills 20 of 28
    weights = out / out.sum()
    centre = (weights.sum(axis=1) @ np.arange(28), weights.sum(axis=0) @ np.arange(28))
    assert abs(centre[0] - 13.5) <= 0.5 and abs(centre[1] - 13.5) <= 0.5
    assert out[0, 0] == 0.0 and out.max() == 1.0  # inverted: white ink on black


def test_center_mass_leaves_images_already_at_the_input_size_alone() -> None:
    digit = np.zeros((28, 28), np.uint8)
    digit[2:9, 3:6] = 200  # deliberately off-centre: a 28x28 image is taken as framed
    out = preprocess(Image.fromarray(digit), _mass_config())
    np.testing.assert_array_equal(out[0], (digit / 255.0).astype(np.float32))


def test_center_mass_on_a_blank_image_gives_zeros() -> None:
    assert not preprocess(Image.new("L", (50, 50), 255), _mass_config()).any()


@pytest.mark.parametrize("overrides", [{"color_mode": "RGB"}, {"resize": "shorter_side"}])
def test_center_mass_needs_a_grey_exact_resize(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"preprocess\.center"):
        _mass_config(**overrides)
