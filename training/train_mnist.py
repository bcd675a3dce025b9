"""Train the bundled MNIST CNN, export it to ONNX and write the whole ``models/mnist-cnn`` directory.

    python -m training.train_mnist --data ../shared/data/mnist --out models/mnist-cnn

Deterministic for a given seed and thread count: seeded generators for the split, the initial weights,
the batch order, dropout and augmentation; ``torch.use_deterministic_algorithms``; a fixed number of
intra-op threads (the default, 2, is what the committed model was trained with).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.export import ParityReport, check_parity, export_onnx, exporter_versions, provenance_date
from training.framing_study import framing_table
from training.mnist_bundle import write_bundle_files
from training.mnist_cnn import ARCHITECTURE, AUGMENTATION, MnistCNN, WithSoftmax, count_parameters, random_affine
from training.mnist_idx import SPLIT_SEED, load_mnist, stratified_split

OPSET = 17


@dataclass(frozen=True)
class TrainingSettings:
    data: Path
    out: Path
    epochs: int = 50
    seed: int = 0
    limit: int | None = None
    val_size: int = 1000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    augment: bool = True
    threads: int = 2
    show_progress: bool = True


@dataclass
class TrainingResult:
    settings: TrainingSettings
    train_count: int
    val_count: int
    epoch_losses: list[float] = field(default_factory=list)
    epoch_train_accuracies: list[float] = field(default_factory=list)
    epoch_val_accuracies: list[float] = field(default_factory=list)
    val_accuracy: float = 0.0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((10, 10), dtype=np.int64))
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    parameter_count: int = 0
    training_seconds: float = 0.0
    parity: ParityReport | None = None
    model_path: Path | None = None
    framing_table: str = ""


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1], the exported model's input."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def make_deterministic(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def predict(model: nn.Module, pixels: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int = 10) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def train_epoch(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    settings: TrainingSettings,
    description: str,
) -> tuple[float, float]:
    model.train()
    loss_function = nn.CrossEntropyLoss()
    order = torch.randperm(len(pixels), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), settings.batch_size)
    progress = tqdm(batches, desc=description, unit="batch", leave=True, disable=not settings.show_progress)
    for start in progress:
        index = order[start : start + settings.batch_size]
        batch, targets = pixels[index], labels[index]
        if settings.augment:
            batch = random_affine(batch, generator)
        logits = model(batch)
        loss = loss_function(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(index)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(index)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    return total_loss / seen, correct / seen


def train(settings: TrainingSettings) -> tuple[MnistCNN, TrainingResult, torch.Tensor]:
    """Train on the train split; returns the model, the figures, and the validation pixels."""
    make_deterministic(settings.seed, settings.threads)
    dataset = load_mnist(settings.data)
    images, labels = dataset.images, dataset.labels
    if settings.limit is not None:
        images, labels = images[: settings.limit], labels[: settings.limit]
    train_indices, val_indices = stratified_split(labels, settings.val_size, SPLIT_SEED)
    train_pixels, val_pixels = to_pixels(images[train_indices]), to_pixels(images[val_indices])
    train_labels = torch.from_numpy(labels[train_indices].astype(np.int64))
    val_labels = labels[val_indices].astype(np.int64)

    model = MnistCNN()
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(train_pixels) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, epochs=settings.epochs, steps_per_epoch=steps_per_epoch
    )
    result = TrainingResult(
        settings=settings,
        train_count=len(train_indices),
        val_count=len(val_indices),
        parameter_count=count_parameters(model),
    )
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        loss, accuracy = train_epoch(
            model,
            train_pixels,
            train_labels,
            optimizer,
            scheduler,
            generator,
            settings,
            description=f"epoch {epoch}/{settings.epochs}",
        )
        val_predictions = predict(model, val_pixels).argmax(dim=1).numpy()
        val_accuracy = float(np.mean(val_predictions == val_labels))
        result.epoch_losses.append(loss)
        result.epoch_train_accuracies.append(accuracy)
        result.epoch_val_accuracies.append(val_accuracy)
        if settings.show_progress:
            tqdm.write(f"epoch {epoch}: loss {loss:.4f}  train acc {accuracy:.4f}  val acc {val_accuracy:.4f}")
    result.training_seconds = time.perf_counter() - started
    result.val_accuracy = result.epoch_val_accuracies[-1]
    result.confusion = confusion_matrix(val_labels, val_predictions)
    result.val_labels = val_labels
    return model, result, val_pixels


def provenance(result: TrainingResult) -> dict[str, str]:
    settings = result.settings
    return {
        "model_name": "mnist-cnn",
        "architecture": ARCHITECTURE,
        "parameters": str(result.parameter_count),
        "data": (
            f"MNIST IDX from {settings.data.name}: {result.train_count + result.val_count} digits "
            f"(first 8,000 of the official MNIST test set), stratified split seed {SPLIT_SEED}: "
            f"{result.train_count} train, {result.val_count} validation (never trained on)"
        ),
        "validation_accuracy": f"{result.val_accuracy:.4f}",
        "validation_size": str(result.val_count),
        "seed": str(settings.seed),
        "training": (
            f"AdamW lr {settings.learning_rate:g} one-cycle, weight decay {settings.weight_decay:g}, "
            f"batch {settings.batch_size}, {settings.epochs} epochs, augmentation "
            f"{AUGMENTATION if settings.augment else 'none'}"
        ),
        "input_contract": "input float32 [N,1,28,28], pixels in [0,1], white digit on black",
        "output_contract": "probabilities float32 [N,10], softmax over digits 0..9",
        "date": provenance_date(),
        **exporter_versions(),
    }


def train_and_bundle(settings: TrainingSettings) -> TrainingResult:
    """Train, export ``out/1/model.onnx`` with provenance, check parity, write labels/config/model card."""
    model, result, val_pixels = train(settings)
    exported = WithSoftmax(model).eval()
    model_path = settings.out / "1" / "model.onnx"
    export_onnx(exported, val_pixels[:1], model_path, opset=OPSET, metadata=provenance(result))
    result.parity = check_parity(exported, model_path, val_pixels.numpy())
    result.model_path = model_path
    val_digits = np.rint(val_pixels.squeeze(1).numpy() * 255).astype(np.uint8)
    result.framing_table = framing_table(model_path, val_digits, result.val_labels)
    write_bundle_files(settings.out, result)
    return result


def parse_args(argv: Sequence[str] | None) -> TrainingSettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory with MNIST train-*-ubyte[.gz]")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write, e.g. models/mnist-cnn")
    parser.add_argument("--epochs", type=int, default=TrainingSettings.epochs)
    parser.add_argument("--seed", type=int, default=TrainingSettings.seed)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N digits (smoke tests)")
    parser.add_argument("--val-size", type=int, default=TrainingSettings.val_size)
    parser.add_argument("--batch-size", type=int, default=TrainingSettings.batch_size)
    parser.add_argument("--lr", type=float, default=TrainingSettings.learning_rate, help="peak learning rate")
    parser.add_argument("--no-augment", action="store_true", help="train without random affine augmentation")
    parser.add_argument("--threads", type=int, default=TrainingSettings.threads, help="torch intra-op threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    return TrainingSettings(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        limit=args.limit,
        val_size=args.val_size,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        augment=not args.no_augment,
        threads=args.threads,
        show_progress=not args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    result = train_and_bundle(parse_args(argv))
    print(f"validation accuracy {result.val_accuracy:.4f} on {result.val_count} held-out digits")
    print(f"training time {result.training_seconds:.0f} s; {result.parity}")
    print(f"wrote {result.settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
