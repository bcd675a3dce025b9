"""The Classify sections of a model's config.yaml: ``preprocess:``, ``postprocess:`` and ``limits:``, parsed
strictly (an unknown key or a bad value is a :class:`ConfigError` naming the file and the key)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.schema import Section, is_number
from onnx_serve.imaging.decode import ImageLimits

ColorMode = Literal["L", "RGB", "BGR"]
Resize = Literal["exact", "shorter_side"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
Layout = Literal["NCHW", "NHWC"]
DType = Literal["FP32", "FP16", "UINT8"]
Center = Literal["none", "mass"]

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype(np.float32), "FP16": np.dtype(np.float16),
                                           "UINT8": np.dtype(np.uint8)}


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """``preprocess:`` in a model's config.yaml; see :func:`~onnx_serve.imaging.preprocess` for the order of
    the steps."""

    color_mode: ColorMode = "L"
    background: int = 255
    resize: Resize = "exact"
    width: int = 28
    height: int = 28
    crop_fraction: float = 1.0
    interpolation: Interpolation = "bilinear"
    invert: bool | Literal["auto"] = "auto"
    center: Center = "none"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = "NCHW"
    dtype: DType = "FP32"

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of one sample (no batch axis): ``(C, H, W)`` for NCHW, ``(H, W, C)`` for NHWC."""
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return _NUMPY_DTYPES[self.dtype]

    @property
    def resampling(self) -> Image.Resampling:
        """The Pillow filter ``interpolation`` names."""
        return _RESAMPLING[self.interpolation]


@dataclass(frozen=True, slots=True)
class PostprocessConfig:
    """``postprocess:`` in a model's config.yaml."""

    softmax: bool = False
    top_k: int = 5


def parse_preprocess(raw: object, where: str) -> PreprocessConfig:
    """Validate ``preprocess:`` (``None`` -> defaults); a :class:`ConfigError` names the bad key."""
    section = Section(raw, where, "preprocess", [f.name for f in fields(PreprocessConfig)])
    d = PreprocessConfig()
    color_mode = section.choice("color_mode", d.color_mode, get_args(ColorMode))
    resize = section.choice("resize", d.resize, get_args(Resize))
    crop_fraction = section.number("crop_fraction", d.crop_fraction, "a number in (0, 1]", lambda v: 0 < v <= 1)
    if resize == "exact" and crop_fraction != 1.0:
        raise section.error("crop_fraction", "1 with resize: exact (it is for resize: shorter_side)")
    invert = section.raw.get("invert", d.invert)
    if not isinstance(invert, bool) and invert != "auto":
        raise section.error("invert", "true, false or auto")
    channels = 1 if color_mode == "L" else 3
    cfg = PreprocessConfig(
        color_mode=color_mode,
        background=section.integer("background", d.background, 0, 255),
        resize=resize,
        width=section.integer("width", d.width, 1),
        height=section.integer("height", d.height, 1),
        crop_fraction=crop_fraction,
        interpolation=section.choice("interpolation", d.interpolation, get_args(Interpolation)),
        invert=invert,
        center=section.choice("center", d.center, get_args(Center)),
        scale=section.number("scale", d.scale, "a finite number > 0", lambda v: 0 < v < math.inf),
        mean=_per_channel(section, "mean", d.mean, channels, nonzero=False),
        std=_per_channel(section, "std", d.std, channels, nonzero=True),
        layout=section.choice("layout", d.layout, get_args(Layout)),
        dtype=section.choice("dtype", d.dtype, get_args(DType)),
    )
    if cfg.center == "mass" and (cfg.color_mode != "L" or cfg.resize != "exact"):
        raise section.error("center", "none unless color_mode is L and resize is exact (mass frames one grey "
                                      "digit)")
    if cfg.dtype == "UINT8" and (cfg.scale != 1 or any(cfg.mean) or any(s != 1 for s in cfg.std)):
        raise ConfigError(
            f"{where}: preprocess.dtype: UINT8 feeds the 0..255 pixels themselves, so set scale: 1, "
            f"mean: [0], std: [1] (got scale {cfg.scale}, mean {list(cfg.mean)}, std {list(cfg.std)})"
        )
    return cfg


def parse_postprocess(raw: object, where: str) -> PostprocessConfig:
    """Validate the ``postprocess:`` mapping (``None`` -> defaults)."""
    section = Section(raw, where, "postprocess", [f.name for f in fields(PostprocessConfig)])
    d = PostprocessConfig()
    return PostprocessConfig(softmax=section.boolean("softmax", d.softmax), top_k=section.integer("top_k", d.top_k, 1))


def parse_limits(raw: object, where: str) -> ImageLimits:
    """Validate the ``limits:`` mapping (``None`` -> defaults).

    ``max_image_pixels`` may not exceed Pillow's own decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million), which Pillow enforces regardless.
    """
    section = Section(raw, where, "limits", [f.name for f in fields(ImageLimits)])
    d = ImageLimits()
    pillow_limit = int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else None
    return ImageLimits(
        max_image_bytes=section.integer("max_image_bytes", d.max_image_bytes, 1),
        max_image_pixels=section.integer("max_image_pixels", d.max_image_pixels, 1, pillow_limit),
        max_images_per_request=section.integer("max_images_per_request", d.max_images_per_request, 1),
        max_decoded_bytes=section.integer("max_decoded_bytes", d.max_decoded_bytes, 1),
    )


def _per_channel(section: Section, key: str, default: tuple[float, ...], channels: int,
                 nonzero: bool) -> tuple[float, ...]:
    value = section.raw.get(key, default)
    lengths = "1" if channels == 1 else f"1 or {channels}"
    expected = f"a list of {lengths} finite numbers" + (", none 0" if nonzero else "")
    ok = isinstance(value, list | tuple) and len(value) in (1, channels)
    if not ok or not all(is_number(v) and not (nonzero and v == 0) for v in value):
        raise section.error(key, expected)
    return tuple(float(v) for v in value)
