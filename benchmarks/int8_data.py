"""The sample folders of the INT8 figures (benchmarks/int8.py), written under a work directory, never into the
repository: MNIST digits as PNGs from ../shared/data/mnist, and views of the photos scikit-image ships.

- MNIST: the 1,000 validation digits of the bundled model's split (training.mnist_idx, the seed that
  training.train_mnist holds out) in one folder per digit, so accuracy is measured on them; calibration on
  training digits only.
- Photos: the photographs of `skimage.data` (15), each as 24 deterministic views (crops, a mirror, scales): 360
  views. The split is by photo: calibration views and held-out views never show the same photo.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.models import ROOT

MNIST_DATA = ROOT.parent / "shared" / "data" / "mnist"
VALIDATION_DIGITS = 1000
CALIBRATION_DIGITS = 1000  # the quantize run draws its --samples from these
# Held out: the photos of things ImageNet has classes for, so that FP32's top-1 means something; the textures and
# scientific images calibrate (their activation ranges cover the others': calibrating on the held-out views
# themselves gave the same agreement).
CALIBRATION_PHOTOS = ("brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "coins",
                      "moon")
HOLDOUT_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle", "clock")
SCALES = (1.0, 0.75, 0.5)
# (left, top, width, height) as fractions of the image
CROPS = ((0.0, 0.0, 1.0, 1.0), (0.1, 0.1, 0.8, 0.8), (0.0, 0.0, 0.7, 0.7), (0.3, 0.3, 0.7, 0.7))


def mnist_folders(work: Path) -> tuple[Path, Path]:
    """(calibration, validation) folders of PNG digits, one subfolder per digit (the label)."""
    from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

    calibration, validation = work / "mnist-calibration", work / "mnist-validation"
    if (validation / "done").exists():
        return calibration, validation
    dataset = load_mnist(MNIST_DATA)
    train, val = stratified_split(dataset.labels, VALIDATION_DIGITS, SPLIT_SEED)
    chosen = np.random.default_rng(0).permutation(train)[:CALIBRATION_DIGITS]
    for folder, indexes in ((calibration, chosen), (validation, val)):
        for index in indexes:
            target = folder / str(int(dataset.labels[index]))
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(dataset.images[index]).save(target / f"{int(index):04d}.png")
    (validation / "done").write_text("")
    return calibration, validation


def _photos() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data

    return {"astronaut": data.astronaut, "camera": data.camera, "chelsea": data.chelsea, "coffee": data.coffee,
            "rocket": data.rocket, "hubble_deep_field": data.hubble_deep_field,
            "immunohistochemistry": data.immunohistochemistry, "retina": data.retina, "coins": data.coins,
            "moon": data.moon, "motorcycle": lambda: data.stereo_motorcycle()[0], "clock": data.clock,
            "brick": data.brick, "grass": data.grass, "gravel": data.gravel}


def views(image: Image.Image) -> list[Image.Image]:
    """Every crop of CROPS, of the image and its mirror, at every scale of SCALES: 24 views."""
    out = []
    for flip, scale, (left, top, width, height) in itertools.product((False, True), SCALES, CROPS):
        view = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image
        w, h = view.size
        view = view.crop((round(left * w), round(top * h), round((left + width) * w), round((top + height) * h)))
        if scale != 1.0:
            view = view.resize((max(1, round(view.width * scale)), max(1, round(view.height * scale))),
                               Image.Resampling.BICUBIC)
        out.append(view)
    return out


def photo_folders(work: Path) -> tuple[Path, Path]:
    """(calibration, held-out) folders of PNG views of the photos (see the module)."""
    calibration, holdout = work / "photos-calibration", work / "photos-holdout"
    if (holdout / "done").exists():
        return calibration, holdout
    photos = _photos()
    for folder, names in ((calibration, CALIBRATION_PHOTOS), (holdout, HOLDOUT_PHOTOS)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            image = Image.fromarray(photos[name]()).convert("RGB")
            for index, view in enumerate(views(image)):
                view.save(folder / f"{name}-{index:02d}.png")
    (holdout / "done").write_text("")
    return calibration, holdout


def count_images(folder: Path, suffixes: Sequence[str] = (".png",)) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix in suffixes)
