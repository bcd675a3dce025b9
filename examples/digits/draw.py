"""Draws the example digits (no dataset is copied into the repository): a pen stroke for 1, and 3, 4 and 7 in
Pillow's built-in font, dark on light paper as a scan or a photo would be.

    python examples/digits/draw.py        # rewrites examples/digits/*.png (tests/system/test_readme.py checks them)
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
SIDE = 112


def digit(name: str) -> Image.Image:
    image = Image.new("L", (SIDE, SIDE), 255)
    draw = ImageDraw.Draw(image)
    if name == "1":
        draw.line([(58, 18), (54, 94)], fill=0, width=9)
    else:
        draw.text((SIDE // 2, SIDE // 2), name, fill=0, font=ImageFont.load_default(size=90), anchor="mm",
                  stroke_width=3, stroke_fill=0)
    return image


def main(out: Path = HERE) -> int:
    for name in ("1", "3", "4", "7"):
        digit(name).save(out / f"{name}.png", optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
