"""How much does the framing of a user's digit image cost the bundled model?

    python -m training.framing_study --data ../shared/data/mnist --model models/mnist-cnn/1/model.onnx

Renders each held-out validation digit the way a user might send it -- dark ink on white paper, a
100x100 PNG, the digit at various sizes and positions -- and classifies it through two pipelines:

* ``plain``: the serving config's preprocessing (greyscale, invert, resize the whole image to 28x28).
* ``mnist``: MNIST's own normalisation (crop to the ink's bounding box, fit it in 20x20 keeping the
  aspect ratio, paste into 28x28 so that the centre of mass lands in the middle).

Uses only numpy, Pillow and ONNX Runtime, so it says what a torch-free server would see.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image

from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

CANVAS = 100
# name -> (digit height in canvas pixels, centre x, centre y)
FRAMINGS: dict[str, tuple[int, int, int]] = {
    "mnist-like (digit 71 px, centred)": (71, 50, 50),
    "large (digit 92 px, centred)": (92, 50, 50),
    "small (digit 40 px, centred)": (40, 50, 50),
    "off-centre (digit 50 px at 30,30)": (50, 30, 30),
}


def render_user_png(digit: np.ndarray, height: int, centre_x: int, centre_y: int) -> bytes:
    """A 28x28 white-on-black MNIST digit -> PNG bytes of a dark-on-light 100x100 image."""
    rows, cols = np.nonzero(digit > 30)
    crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = height / crop.shape[0]
    width = max(1, round(crop.shape[1] * scale))
    ink = Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(ink, (centre_x - width // 2, centre_y - height // 2))
    inverted = Image.fromarray(255 - np.asarray(canvas))
    buffer = io.BytesIO()
    inverted.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_grey_white_on_black(png: bytes) -> np.ndarray:
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 255 - grey if border.mean() > 127 else grey


def plain_preprocess(png: bytes) -> np.ndarray:
    grey = decode_grey_white_on_black(png)
    resized = Image.fromarray(grey).resize((28, 28), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def mnist_preprocess(png: bytes) -> np.ndarray:
    grey = decode_grey_white_on_black(png)
    rows, cols = np.nonzero(grey > 0.2 * grey.max())
    crop = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    box = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    mass = box.sum()
    centre_y = (box.sum(axis=1) * np.arange(box.shape[0])).sum() / mass
    centre_x = (box.sum(axis=0) * np.arange(box.shape[1])).sum() / mass
    top, left = round(13.5 - centre_y), round(13.5 - centre_x)
    top, left = min(max(top, 0), 28 - box.shape[0]), min(max(left, 0), 28 - box.shape[1])
    frame = np.zeros((28, 28), dtype=np.float32)
    frame[top : top + box.shape[0], left : left + box.shape[1]] = box
    return frame / 255.0


def accuracy(session: onnxruntime.InferenceSession, pixels: np.ndarray, labels: np.ndarray) -> float:
    (probabilities,) = session.run(None, {"input": pixels[:, None].astype(np.float32)})
    return float(np.mean(probabilities.argmax(axis=1) == labels))


PIPELINES: dict[str, Callable[[bytes], np.ndarray]] = {"plain": plain_preprocess, "mnist": mnist_preprocess}


def framing_table(model_path: str | Path, digits: np.ndarray, labels: np.ndarray) -> str:
    """A markdown table: accuracy per framing (rows) and preprocessing pipeline (columns)."""
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    labels = labels.astype(np.int64)
    lines = [
        f"| framing of a {CANVAS}x{CANVAS} dark-on-light PNG | " + " | ".join(PIPELINES) + " |",
        "|---" * (len(PIPELINES) + 1) + "|",
        f"| (the 28x28 digits themselves) | {accuracy(session, digits / 255.0, labels):.2%} | |",
    ]
    for name, (height, centre_x, centre_y) in FRAMINGS.items():
        pngs = [render_user_png(digit, height, centre_x, centre_y) for digit in digits]
        cells = [
            f"{accuracy(session, np.stack([preprocess(png) for png in pngs]), labels):.2%}"
            for preprocess in PIPELINES.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--val-size", type=int, default=1000)
    args = parser.parse_args(argv)
    dataset = load_mnist(args.data)
    _, val = stratified_split(dataset.labels, args.val_size, SPLIT_SEED)
    print(framing_table(args.model, dataset.images[val], dataset.labels[val]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
