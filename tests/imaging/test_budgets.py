"""Decoded bytes are budgeted per image (``limits.max_decoded_bytes``, by the decoded mode's bytes a pixel) and
per server (:class:`DecodingBudget`, ``--max-decoding-bytes``): refused from the header with a message naming
the limit, INVALID_ARGUMENT for an image over its model's limit, RESOURCE_EXHAUSTED when the server's budget
has no room."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from onnx_serve.core.errors import InvalidArgument, ResourceExhausted
from onnx_serve.imaging import (
    DecodingBudget,
    ImageLimits,
    PreprocessConfig,
    decode_and_preprocess,
    decode_image,
    image_from_pixels,
    parse_limits,
    parse_preprocess,
)
from onnx_serve.imaging.decode import decoder_buffer_bytes
from PIL import Image, TiffImagePlugin

MASS = parse_preprocess({"color_mode": "L", "width": 28, "height": 28, "invert": "auto", "center": "mass"}, "test")
GREY = PreprocessConfig(width=8, height=8)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


class RecordingBudget(DecodingBudget):
    """A budget that remembers what each reservation asked for."""

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self.asked: list[int] = []

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        self.asked.append(nbytes)
        with super().reserve(nbytes):
            yield


# ------------------------------------------------------------------------------------- per image


def test_the_default_limit_admits_every_grey_and_16_bit_image_under_the_pixel_limit() -> None:
    limits = parse_limits(None, "test")
    assert limits.max_decoded_bytes == 128 * 1024 * 1024
    assert 2 * limits.max_image_pixels <= limits.max_decoded_bytes < 4 * limits.max_image_pixels


def test_decoded_bytes_are_counted_by_the_decoded_mode_and_refused_from_the_header() -> None:
    limits = ImageLimits(max_decoded_bytes=30 * 40 * 2)
    grey = encode(Image.new("L", (30, 40), 128))
    sixteen = encode(Image.fromarray(np.full((40, 30), 1000, dtype=np.uint16)))
    rgb = encode(Image.new("RGB", (30, 40), (1, 2, 3)))
    assert decode_image(grey, limits).size == (30, 40)
    assert decode_image(sixteen, limits).size == (30, 40)  # 2 bytes a pixel: exactly the limit
    for data, mode, needed in ((rgb, "RGB", 4800),):
        for decode in (lambda d: decode_image(d, limits), lambda d: decode_and_preprocess(d, limits, GREY)):
            with pytest.raises(InvalidArgument) as info:
                decode(data)
            assert str(info.value) == (f"image is 30x40 in mode {mode} (4 bytes a pixel): {needed} decoded bytes, "
                                       "above the limit of 2400 (limits.max_decoded_bytes)")
    with pytest.raises(InvalidArgument, match=r"limits\.max_decoded_bytes"):
        decode_image(sixteen, ImageLimits(max_decoded_bytes=30 * 40 * 2 - 1))
    with pytest.raises(InvalidArgument, match=r"mode RGB .* above the limit of 2400"):
        image_from_pixels(bytes(30 * 40 * 3), 30, 40, 3, limits)


def test_a_bomb_is_refused_before_its_pixels_are_decoded() -> None:
    bomb = encode(Image.new("I;16", (3000, 3000)))  # 18 MB decoded, 30 KB encoded
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="decoded bytes"):
        decode_and_preprocess(bomb, ImageLimits(max_decoded_bytes=10_000_000), MASS)
    assert time.perf_counter() - started < 0.5  # no 18 MB inflate: the header says it all


def test_a_large_jpeg_is_measured_at_the_scale_libjpeg_decodes_it_at() -> None:
    photo = encode(Image.new("L", (2000, 1600), 200), "JPEG")  # 3.2 MB decoded at full size
    limits = ImageLimits(max_decoded_bytes=1_000_000)
    with pytest.raises(InvalidArgument, match="decoded bytes"):
        decode_image(photo, limits)
    assert decode_and_preprocess(photo, limits, MASS).shape == (1, 28, 28)  # drafted to 1/4: 250 x 200


# ------------------------------------------------------------------------------------ per server


def test_what_could_never_fit_is_refused_at_once_naming_the_setting() -> None:
    budget = DecodingBudget(1000, wait_s=10)
    started = time.perf_counter()
    refused = pytest.raises(ResourceExhausted, match=r"needs 1001 bytes, more than .* 1000 .*--max-decoding-bytes")
    with refused, budget.reserve(1001):
        pass
    assert time.perf_counter() - started < 1
    assert budget.in_use_bytes == 0


def test_a_reservation_waits_briefly_for_room_then_is_refused() -> None:
    budget = DecodingBudget(1000, wait_s=0.05)
    with budget.reserve(700):
        assert budget.in_use_bytes == 700
        refused = pytest.raises(ResourceExhausted, match=r"busy decoding .*\(700 of the 1000 of --max-decoding-bytes")
        with refused, budget.reserve(400):
            pass
        with budget.reserve(300):  # what still fits goes ahead
            assert budget.in_use_bytes == 1000
    assert budget.in_use_bytes == 0


def test_a_waiting_reservation_gets_the_bytes_when_they_are_released() -> None:
    budget = DecodingBudget(1000, wait_s=5)
    held, got = threading.Event(), threading.Event()

    def holder() -> None:
        with budget.reserve(800):
            held.set()
            time.sleep(0.1)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    with budget.reserve(800):
        got.set()
    thread.join(5)
    assert got.is_set() and budget.in_use_bytes == 0


def test_capacity_zero_is_no_limit() -> None:
    with DecodingBudget(0).reserve(10**12):
        pass
    with pytest.raises(ValueError, match="capacity_bytes"):
        DecodingBudget(-1)


def test_the_pipeline_holds_the_decoded_bytes_while_it_works_and_always_gives_them_back() -> None:
    budget = RecordingBudget(64 * 1024 * 1024)
    page = encode(Image.new("L", (2000, 1000), 255))
    assert decode_and_preprocess(page, ImageLimits(), MASS, budget).shape == (1, 28, 28)
    assert budget.asked[-1] >= 2000 * 1000 and budget.in_use_bytes == 0
    truncated = page[: len(page) // 2]  # the header is fine; the pixel data ends early
    with pytest.raises(InvalidArgument, match="truncated"):
        decode_and_preprocess(truncated, ImageLimits(), MASS, budget)
    assert budget.in_use_bytes == 0
    with pytest.raises(ResourceExhausted, match="--max-decoding-bytes"):
        decode_and_preprocess(page, ImageLimits(), MASS, DecodingBudget(1_000_000))


def test_decoders_that_hold_whole_image_buffers_are_charged_for_them() -> None:
    rgb = Image.new("RGB", (400, 300), (10, 20, 30))
    assert decoder_buffer_bytes(opened(encode(rgb, "JPEG"))) == 0  # baseline: a few rows at a time
    # Progressive 4:2:0: every DCT coefficient, 2 bytes each: luma at full size, two chroma planes at a quarter.
    assert decoder_buffer_bytes(opened(encode(rgb, "JPEG", progressive=True))) == 400 * 300 * 2 + 2 * 200 * 150 * 2
    assert decoder_buffer_bytes(opened(encode(rgb, "WEBP"))) == 3 * 400 * 300 * 4
    assert decoder_buffer_bytes(opened(encode(rgb, "PNG"))) == 0
    striped = opened(encode(rgb, "TIFF", compression="tiff_lzw"))  # libtiff writes strips of about 64 KB
    rows = striped.tag_v2[278]
    assert rows < 300 and decoder_buffer_bytes(striped) == rows * 400 * 4
    one_strip = TiffImagePlugin.STRIP_SIZE
    try:
        TiffImagePlugin.STRIP_SIZE = 1 << 30  # Pillow writes the whole image as one strip
        assert decoder_buffer_bytes(opened(encode(rgb, "TIFF", compression="tiff_adobe_deflate"))) == 400 * 300 * 4
    finally:
        TiffImagePlugin.STRIP_SIZE = one_strip
