"""Turn untrusted image bytes (or raw pixels) into a loaded Pillow image in a standard mode.

Everything here runs on the request path, off the event loop: Pillow releases the GIL while it
decodes (``Image.load``), converts and transposes, so several images decode in parallel threads.

Conversions from wide modes (16-bit, float) go a strip of rows at a time, so they never hold wide
copies of a whole image. Every failure caused by the input raises
:class:`~onnx_serve.core.errors.InvalidArgument` with a reason a person can act on. Images come back
fully loaded, EXIF orientation applied, in one of the modes ``L``, ``LA``, ``RGB`` or ``RGBA`` with 8 bits
per sample (see :func:`to_standard_mode`).
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from onnx_serve.core.errors import InvalidArgument

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
"""Pillow format names accepted by :func:`decode_image`; every other Pillow plugin is never tried."""

STANDARD_MODES = frozenset({"L", "LA", "RGB", "RGBA"})

# Pillow warns (rather than fails) between MAX_IMAGE_PIXELS and twice that; its documentation
# recommends turning the warning into an error. Our own limit is checked right after the header is
# read and is never above Pillow's (see ImageLimits), so this only changes which of the two checks
# reports a bomb, not whether it is refused.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_MAGIC_NUMBERS = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_MODE_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_MAX_REASON_CHARS = 200
STRIP_PIXELS = 1 << 20
"""Pixels per strip when an image is converted (or reduced) a strip of rows at a time, so the wider copies the
conversion makes are bounded by this, not by the image (a few MB, where a 40 M pixel image's are 160 MB each)."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Per-image limits for the Classify API (``limits:`` in a model's config.yaml).

    ``max_image_bytes`` bounds the encoded size, ``max_image_pixels`` the decoded width x height and
    ``max_decoded_bytes`` the memory the decoded pixels take as Pillow stores them (width x height x
    :func:`bytes_per_pixel` of the decoded mode: a 16-bit image costs twice a grey one, RGB, RGBA and float
    four times), both checked from the header, before any pixel is decoded. The default lets every image
    under the pixel limit through but 4-byte ones above 32 M pixels (a JPEG is measured after the decoder's
    own downscaling, see :func:`~onnx_serve.imaging.pipeline.decode_and_preprocess`).
    ``max_images_per_request`` is enforced by the API layer.
    """

    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 64
    max_decoded_bytes: int = 128 * 1024 * 1024


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits) -> Image.Image:
    """Decode one encoded image (JPEG, PNG, BMP, GIF, WebP or TIFF) safely, at full size.

    Order of checks: empty input, encoded size, format (from the header only), pixel count and decoded
    bytes from the header (``Image.open`` is lazy, so a decompression bomb is refused before its pixels are
    allocated), then the pixel data is decoded (GIL released). Animated images and multi-page TIFFs
    yield their first frame. EXIF orientation is applied; an unreadable EXIF block is ignored (the
    pixels are kept as stored) rather than failing a photo that decodes fine. ICC profiles are not
    applied. The result is in a standard mode (see :func:`to_standard_mode`).

    The server decodes with :func:`~onnx_serve.imaging.pipeline.decode_and_preprocess` instead, which
    reduces a large image before it is converted, framed or resized.
    """
    image = open_image(data, limits)
    check_decoded_bytes(image.mode, image.size, limits)
    load_image(image, limits)
    with contextlib.suppress(Exception):  # a malformed EXIF block is not worth refusing the image for
        ImageOps.exif_transpose(image, in_place=True)
    return to_standard_mode(image)


def open_image(data: bytes | bytearray | memoryview, limits: ImageLimits) -> Image.Image:
    """The first steps of :func:`decode_image`: the checks up to the pixel count, from the header only. The
    image comes back lazy (no pixel decoded), so the caller can still pick a JPEG draft size."""
    size = memoryview(data).nbytes
    if size == 0:
        raise InvalidArgument("image is empty (0 bytes)")
    if size > limits.max_image_bytes:
        raise InvalidArgument(f"image is {size} bytes, above the limit of {limits.max_image_bytes}")
    claimed_format = _sniff_format(bytes(data[:12]))
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        if claimed_format is None:
            supported = ", ".join(SUPPORTED_FORMATS)
            raise InvalidArgument(f"not a recognised image format (supported: {supported})") from None
        raise InvalidArgument(f"truncated or corrupt {claimed_format} header") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgument(_pillow_bomb_reason(exc, limits)) from None
    except MemoryError:
        raise
    except Exception as exc:  # any other failure while parsing untrusted headers is the input's fault
        raise InvalidArgument(_decode_failure_reason(exc, claimed_format)) from None
    check_pixel_count(image.size, limits)
    return image


def load_image(image: Image.Image, limits: ImageLimits) -> None:
    """Decode the pixels of an :func:`open_image` (the first frame only; releases the GIL while decoding)."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgument(_pillow_bomb_reason(exc, limits)) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidArgument(_decode_failure_reason(exc, image.format or "image")) from None
    check_pixel_count(image.size, limits)  # a frame may extend the canvas (GIF) while loading
    check_decoded_bytes(image.mode, image.size, limits)


def image_from_pixels(
    pixels: bytes | bytearray | memoryview, width: int, height: int, channels: int, limits: ImageLimits
) -> Image.Image:
    """Wrap raw 8-bit pixels (row-major, ``height x width x channels``) as a Pillow image.

    ``channels`` is 1 (``L``), 3 (``RGB``) or 4 (``RGBA``). The byte count is checked before
    anything is allocated; ``max_image_pixels`` and ``max_decoded_bytes`` apply, ``max_image_bytes`` (an
    encoded-size limit) does not. ``L`` and ``RGBA`` share memory with ``pixels`` (no copy); ``RGB`` is copied
    once because Pillow stores it with 4 bytes per pixel.
    """
    for name, value in (("width", width), ("height", height), ("channels", channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidArgument(f"raw pixels: {name} must be a positive integer, got {value!r}")
    if channels not in _MODE_BY_CHANNELS:
        raise InvalidArgument(f"raw pixels: channels must be 1, 3 or 4, got {channels}")
    expected = width * height * channels
    actual = memoryview(pixels).nbytes
    if actual != expected:
        raise InvalidArgument(
            f"raw pixels: {width}x{height}x{channels} needs {expected} bytes, got {actual}"
        )
    check_pixel_count((width, height), limits)
    mode = _MODE_BY_CHANNELS[channels]
    check_decoded_bytes(mode, (width, height), limits)
    # Pillow reads any buffer (a memoryview too, with no copy); its type stubs name only bytes and arrays.
    return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)  # type: ignore[arg-type]



def check_pixel_count(size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse an image whose width x height is zero or above ``limits.max_image_pixels``."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"image is {width}x{height}: it has no pixels")
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise InvalidArgument(
            f"image is {width}x{height} = {pixels} pixels, above the limit of {limits.max_image_pixels}"
        )


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores one pixel of ``mode`` in: 1 for ``1``, ``L``, ``P``; 2 for the 16-bit ``I;16*``;
    4 for every other mode it decodes to (``LA``, ``RGB`` and ``YCbCr`` too: Pillow pads them to 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decoder_buffer_bytes(image: Image.Image) -> int:
    """About what the decoder itself holds beside the pixels while it decodes an :func:`open_image` (call it
    before a JPEG draft): most stream a few rows at a time, but a progressive JPEG keeps every DCT coefficient
    (2 bytes a sample, even when it decodes at a reduced scale), WebP decodes into canvases of its own (measured:
    three times the RGBA pixels), and TIFF reads a whole strip or tile, which may be the whole image."""
    width, height = image.size
    if image.format == "JPEG" and image.info.get("progressive"):
        layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
        most_h, most_v = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
        return sum(-(-width * layer[1] // most_h) * -(-height * layer[2] // most_v) * 2 for layer in layers)
    if image.format == "WEBP":
        return 3 * width * height * 4
    if image.format == "TIFF":
        try:
            tags = image.tag_v2  # type: ignore[attr-defined]  # TiffImageFile's
            tile_width, tile_height, rows = tags.get(322), tags.get(323), tags.get(278)
        except Exception:  # tags are read lazily from untrusted bytes: count the worst, a strip of the whole image
            tile_width = tile_height = rows = None
        if isinstance(tile_width, int) and isinstance(tile_height, int):
            return min(tile_width * tile_height, width * height) * bytes_per_pixel(image.mode)
        rows = min(rows, height) if isinstance(rows, int) and rows > 0 else height
        return rows * width * bytes_per_pixel(image.mode)
    return 0


def check_decoded_bytes(mode: str, size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse an image whose decoded pixels would take more than ``limits.max_decoded_bytes``."""
    width, height = size
    needed = width * height * bytes_per_pixel(mode)
    if needed > limits.max_decoded_bytes:
        raise InvalidArgument(
            f"image is {width}x{height} in mode {mode} ({bytes_per_pixel(mode)} bytes a pixel): {needed} decoded "
            f"bytes, above the limit of {limits.max_decoded_bytes} (limits.max_decoded_bytes)"
        )


def to_standard_mode(image: Image.Image) -> Image.Image:
    """Return ``image`` in mode ``L``, ``LA``, ``RGB`` or ``RGBA`` (8 bits per sample).

    Images already in one of those modes are returned as they are (no copy). Conversions:

    - ``1`` (bilevel) -> ``L`` with 0/255.
    - ``P``/``PA`` (palette) -> ``RGBA`` when it has transparency (a tRNS chunk, a transparent GIF
      index or an RGBA palette), else ``RGB``. ``L``/``RGB`` with a single transparent colour
      (``info["transparency"]``) -> ``LA``/``RGBA`` so the transparent pixels get the background.
    - ``I;16*`` and ``I`` are 16-bit samples (16-bit PNG/TIFF): ``round(v * 255 / 65535)``, ``I``
      clipped to 0..65535 first. Pillow's own ``convert("L")`` would clip them at 255 instead.
    - ``F`` (float) follows Pillow's convention that samples are on the 0..255 scale: NaN -> 0,
      clipped to 0..255, rounded.
    - ``La``/``RGBa`` (premultiplied) -> ``LA``/``RGBA``; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` ->
      ``RGB`` (Pillow's conversions; ICC profiles are not applied).
    """
    mode = image.mode
    has_transparency = "transparency" in image.info
    if mode in STANDARD_MODES:
        if has_transparency and mode in ("L", "RGB"):
            return image.convert(mode + "A" if mode == "L" else "RGBA")
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        palette_has_alpha = image.palette is not None and image.palette.mode.endswith("A")
        return image.convert("RGBA" if mode == "PA" or has_transparency or palette_has_alpha else "RGB")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode.startswith("I"):
        return _to_eight_bits(image, _sixteen_bit_samples_to_eight)
    if mode == "F":
        return _to_eight_bits(image, _float_samples_to_eight)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"unsupported pixel mode {mode}: {exc}") from None


def _to_eight_bits(image: Image.Image, convert: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """An ``L`` image of ``convert`` (samples -> uint8) applied to ``image``'s samples, a strip of rows at a time:
    the arithmetic's wider temporaries are a strip's, never the whole image's (a 40 M pixel 16-bit image would
    otherwise take several 160 MB uint32 copies)."""
    width, height = image.size
    eight_bits = np.empty((height, width), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        eight_bits[top:bottom] = convert(np.asarray(image.crop((0, top, width, bottom))))
    return Image.fromarray(eight_bits)  # shares eight_bits' memory: no copy


def _sixteen_bit_samples_to_eight(samples: np.ndarray) -> np.ndarray:
    wide = np.clip(samples, 0, 65535).astype(np.uint32)
    eight_bits: np.ndarray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return eight_bits


def _float_samples_to_eight(samples: np.ndarray) -> np.ndarray:
    finite = np.nan_to_num(samples, nan=0.0, posinf=255.0, neginf=0.0)
    eight_bits: np.ndarray = np.rint(np.clip(finite, 0.0, 255.0)).astype(np.uint8)
    return eight_bits


def _sniff_format(head: bytes) -> str | None:
    """The format the first bytes claim to be, used only to word error messages."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC_NUMBERS if head.startswith(magic)), None)


def _decode_failure_reason(exc: Exception, fmt: str | None) -> str:
    what = fmt or "image"
    text = str(exc)
    if isinstance(exc, EOFError) or "truncated" in text.lower():
        return f"truncated image data ({what})"
    if "MAX_TEXT" in text or "text chunks" in text:
        return f"image metadata too large ({what} text or profile chunks)"
    detail = f": {text[:_MAX_REASON_CHARS]}" if text else ""
    return f"corrupt {what} image data ({type(exc).__name__}{detail})"


def _pillow_bomb_reason(exc: Exception, limits: ImageLimits) -> str:
    match = _PILLOW_BOMB_PIXELS.search(str(exc))
    pixels = match.group(1) if match else "too many"
    return f"image is {pixels} pixels, above the limit of {limits.max_image_pixels} (decompression bomb)"


LARGE_IMAGE_PIXELS = 4_000_000  # above this an image decodes in the large-image lane (DataPlane): ~0.1 s and more


def stored_pixels(data: bytes | bytearray | memoryview) -> int:
    """Width x height from the header alone (Pillow opens lazily: microseconds), or 0 when it cannot be read; the
    decode that follows reports why."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except Exception:  # any unreadable header: the real decode gives the reason
        return 0

