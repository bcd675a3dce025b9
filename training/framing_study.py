"""How much does the framing of a user's digit image cost the bundled model?

    python -m training.framing_study --data ../shared/data/mnist --model models/mnist-cnn/1/model.onnx

Renders each held-out validation digit the way a user might send it -- dark ink on white paper, a
100x100 PNG, the digit at various sizes and positions -- and classifies it through the server's own
Classify preprocessing (onnx_serve.imaging, with the model's config.yaml), two ways:

* ``plain``: ``center: none`` (greyscale, resize the whole image to 28x28, invert).
* ``mnist``: ``center: mass``, MNIST's own normalisation (crop to the ink's bounding box, fit it in 20x20
  keeping the aspect ratio, paste into 28x28 so that the centre of mass lands in the middle).

Uses only numpy, Pillow, ONNX Runtime and onnx_serve, so it says what the torch-free server sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import yaml
from onnx_serve.imaging import ImageLimits, PreprocessConfig, decode_image, parse_preprocess, preprocess
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


def serving_preprocess(model_path: Path) -> PreprocessConfig:
    """``preprocess:`` of the config.yaml beside the model's version directory (models/NAME/config.yaml)."""
    config_path = model_path.resolve().parent.parent / "config.yaml"
    raw = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    return parse_preprocess((raw or {}).get("preprocess"), str(config_path))


def pipelines(cfg: PreprocessConfig) -> dict[str, PreprocessConfig]:
    """The table's columns: the serving preprocessing without framing, and with MNIST's framing."""
    return {"plain": dataclasses.replace(cfg, center="none"), "mnist": dataclasses.replace(cfg, center="mass")}


def serve_inputs(pngs: Sequence[bytes], cfg: PreprocessConfig) -> np.ndarray:
    """The model's input batch for these images, as the server's Classify API makes it."""
    return np.stack([preprocess(decode_image(png, ImageLimits()), cfg) for png in pngs])


def accuracy(session: onnxruntime.InferenceSession, inputs: np.ndarray, labels: np.ndarray) -> float:
    (probabilities,) = session.run(None, {"input": inputs.astype(np.float32)})
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def framing_table(model_path: str | Path, digits: np.ndarray, labels: np.ndarray) -> str:
    """A markdown table: accuracy per framing (rows) and preprocessing pipeline (columns)."""
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    columns = pipelines(serving_preprocess(Path(model_path)))
    labels = labels.astype(np.int64)
    lines = [
        f"| framing of a {CANVAS}x{CANVAS} dark-on-light PNG | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        f"| (the 28x28 digits themselves) | {accuracy(session, digits[:, None] / 255.0, labels):.2%} | |",
    ]
    for name, (height, centre_x, centre_y) in FRAMINGS.items():
        pngs = [render_user_png(digit, height, centre_x, centre_y) for digit in digits]
        cells = [f"{accuracy(session, serve_inputs(pngs, cfg), labels):.2%}" for cfg in columns.values()]
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
