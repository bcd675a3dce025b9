"""The non-model files of ``models/mnist-cnn``: labels, serving config and the model card.

Written by the trainer so that one command reproduces the whole directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.mnist_cnn import AUGMENTATION

if TYPE_CHECKING:
    from training.train_mnist import TrainingResult

REPRODUCE_COMMAND = "python -m training.train_mnist --data ../shared/data/mnist --out models/mnist-cnn"

CONFIG_YAML = """\
# Serving settings for the bundled MNIST CNN (written by training/train_mnist.py).
max_batch_size: 64
# No added delay: one run takes ~0.1 ms, so requests that arrive while a batch runs form the next one, and
# waiting for company would only leave the model idle (measured in docs/benchmarks.md).
dynamic_batching:
  max_queue_delay_microseconds: 0
  max_queue_size: 1024
instance_group: {count: 1}
labels: labels.txt
# Classify API: any image -> the model's input, float32 [N, 1, 28, 28] in [0, 1], white digit on black.
preprocess:
  color_mode: L
  background: 255                  # transparent pixels become white paper
  resize: exact
  width: 28
  height: 28
  interpolation: bilinear
  invert: auto                     # dark ink on light paper (the usual photo or scan) is inverted
  center: mass                     # frame the digit as MNIST does (20x20 box, centre of mass) unless the
                                   # image is already 28x28, which is taken as framed and used as is
  scale: 0.00392156862745098       # 1/255; the graph normalises with MNIST mean/std itself
  mean: [0.0]
  std: [1.0]
  layout: NCHW
  dtype: FP32
postprocess:
  softmax: false                   # the graph already outputs probabilities
  top_k: 5
"""


def write_labels(out: Path) -> None:
    (out / "labels.txt").write_text("".join(f"{digit}\n" for digit in range(10)))


def write_config(out: Path) -> None:
    (out / "config.yaml").write_text(CONFIG_YAML)


def _confusion_table(confusion: np.ndarray) -> str:
    header = "| true \\ predicted | " + " | ".join(str(i) for i in range(10)) + " | total | recall |"
    rule = "|---" * 13 + "|"
    rows = []
    for digit, row in enumerate(confusion):
        cells = " | ".join(f"**{count}**" if digit == predicted else str(count) for predicted, count in enumerate(row))
        recall = row[digit] / max(row.sum(), 1)
        rows.append(f"| {digit} | {cells} | {row.sum()} | {recall:.3f} |")
    return "\n".join([header, rule, *rows])


def render_model_card(result: TrainingResult) -> str:
    settings = result.settings
    parity = result.parity
    epochs_table = "\n".join(
        f"| {epoch} | {loss:.4f} | {train_acc:.4f} | {val_acc:.4f} |"
        for epoch, (loss, train_acc, val_acc) in enumerate(
            zip(result.epoch_losses, result.epoch_train_accuracies, result.epoch_val_accuracies, strict=True),
            start=1,
        )
    )
    correct = int(np.trace(result.confusion))
    augmentation = (
        f"{AUGMENTATION} (how handwriting varies in slant, size and position)" if settings.augment else "none"
    )
    return f"""\
# mnist-cnn — handwritten digit classifier

The model onnx-serve ships so that a fresh server classifies something real. Everything in this
directory (`1/model.onnx`, `labels.txt`, `config.yaml` and this card) is written by one command, run
from the repository root with the `train` extra installed:

```sh
{REPRODUCE_COMMAND}
```

Training is deterministic for a given seed (`--seed`, default 0) and thread count (`--threads`,
default 2); the figures below are from that run.

## Architecture

The classic tutorial CNN with batch normalisation and dropout ({result.parameter_count:,} parameters):

| layer | output | parameters |
|---|---|---|
| input: pixels in [0, 1] | 1 x 28 x 28 | |
| normalise: (x - 0.1307) / 0.3081 (MNIST mean/std, inside the graph) | 1 x 28 x 28 | |
| conv 3x3, 32 filters, same padding + batch norm + ReLU | 32 x 28 x 28 | 288 + 64 |
| max pool 2x2 | 32 x 14 x 14 | |
| conv 3x3, 64 filters, same padding + batch norm + ReLU | 64 x 14 x 14 | 18,432 + 128 |
| max pool 2x2 | 64 x 7 x 7 | |
| flatten, dropout 0.25 | 3,136 | |
| dense 128 + ReLU, dropout 0.5 | 128 | 401,536 |
| dense 10 | 10 | 1,290 |
| softmax (inside the graph) | 10 | |

Why the additions: batch norm makes the one-cycle schedule with a high peak learning rate stable
and converges in fewer epochs; dropout and augmentation matter because only ~7,000 digits are
available for training (an eighth of the usual 60,000), so the network would otherwise memorise them.
In export (eval mode) batch norm is folded into the convolutions and dropout disappears.

## Data and split

`../shared/data/mnist`: {result.train_count + result.val_count:,} real MNIST digits, the first 8,000
items of the official MNIST test set (the official 60,000 training items are not used). A stratified
split with a fixed seed, independent of `--seed`, holds out **{result.val_count:,} validation digits
that are never trained on**; the model trains on the other {result.train_count:,}. Hyperparameters were
chosen on a second split carved out of the training digits, so the validation figure below was not
used for tuning.

## Training

AdamW (weight decay {settings.weight_decay:g}), one-cycle learning-rate schedule peaking at
{settings.learning_rate:g}, batch {settings.batch_size}, {settings.epochs} epochs, cross-entropy loss.
Augmentation: {augmentation}.
Training time: {result.training_seconds:.0f} s wall clock on CPU with {settings.threads} threads
({result.training_seconds / settings.epochs:.1f} s per epoch; the machine may have been busy with other work).

| epoch | train loss | train accuracy (augmented) | validation accuracy |
|---|---|---|---|
{epochs_table}

## Validation accuracy

**{result.val_accuracy:.2%}** ({correct} of {result.val_count} held-out digits), the final epoch's
weights (no early stopping on the validation split).

Confusion matrix on the validation split (rows: true digit, columns: predicted digit):

{_confusion_table(result.confusion)}

## Input and output contract

| | name | type | shape | meaning |
|---|---|---|---|---|
| input | `input` | float32 | [N, 1, 28, 28] | grey levels in [0, 1], white digit on black (as MNIST) |
| output | `probabilities` | float32 | [N, 10] | softmax over digits 0..9 (index = digit = `labels.txt` line) |

N is dynamic (the batch axis). ONNX opset {17}. Provenance (architecture, data, validation accuracy,
seed, date, torch/onnx/onnxruntime versions) is stored in the model's `metadata_props`.

Export check: `onnx.checker` (full check) and ONNX Runtime against PyTorch on the whole validation
split: {parity.samples if parity else 0} digits, max absolute difference of probabilities
{parity.max_abs_diff if parity else float("nan"):.2g}, {parity.argmax_mismatches if parity else 0} argmax mismatches
(limits: 1e-5 and none).

## Serving

`config.yaml` turns any PNG/JPEG into the model's input for the Classify API: greyscale, transparent
areas composited onto white, inverted when the image is dark on light (border mean > 127), framed like
MNIST (`center: mass`, below) unless it is already 28x28, scaled by 1/255. The graph normalises itself
and already outputs probabilities, so `postprocess.softmax` is false.

## Framing of real images

MNIST digits are size-normalised into a 20x20 box and centred by centre of mass in the 28x28 frame.
The model tolerates a few pixels of shift and about 10% of scale change (it was trained with them),
but a digit that is small in a large canvas, or off-centre, is far from what it has seen. So
`config.yaml` sets `center: mass`: the server frames the digit as MNIST did (crop to the ink's bounding
box, fit it in 20x20, centre it by centre of mass) before scaling. An image that is already 28x28 is
taken as framed and used pixel for pixel. Measured with `python -m training.framing_study` on the
validation digits, re-drawn dark on white in 100x100 PNGs: `plain` resizes the whole image to 28x28,
`mnist` frames it as `center: mass` does.

{result.framing_table}

The model knows single digits only and has not seen letters, several digits or blank images: it will
still answer with the most likely digit.
"""


def write_bundle_files(out: Path, result: TrainingResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_labels(out)
    write_config(out)
    (out / "README.md").write_text(render_model_card(result))
