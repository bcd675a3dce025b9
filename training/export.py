"""Export a torch model to ONNX with a dynamic batch axis, stamp provenance, and prove parity.

Also what the ImageNet-sized exporters (training/resnet18.py, training/efficientnet.py) share: their
serving config, their provenance metadata and their command line.

Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra packages (onnxscript) and
writes the same bytes for the same weights, which keeps a committed model reproducible.
"""

from __future__ import annotations

import argparse
import datetime
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

DEFAULT_OPSET = 17
BATCH_AXIS_NAME = "batch"


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree on the exported model beyond tolerance."""


@dataclass(frozen=True)
class ParityReport:
    samples: int
    max_abs_diff: float
    argmax_mismatches: int

    def __str__(self) -> str:
        return (
            f"parity over {self.samples} samples: max |ort - torch| = {self.max_abs_diff:.3g}, "
            f"argmax mismatches = {self.argmax_mismatches}"
        )


def provenance_date() -> str:
    """Today's UTC date, or the date of SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    return moment.date().isoformat()


def exporter_versions() -> dict[str, str]:
    return {
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
    }


def model_metadata(model: nn.Module, **fields: str) -> dict[str, str]:
    """``fields`` (model_name, architecture, ...) plus parameter count, date and exporter versions."""
    return {
        **fields,
        "parameters": str(sum(p.numel() for p in model.parameters())),
        "date": provenance_date(),
        **exporter_versions(),
    }


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in text.splitlines())


def _floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def imagenet_config_yaml(
    title: str,
    *,
    preprocess_note: str,
    interpolation: str,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
    labels: str | None = None,
) -> str:
    """config.yaml of a 1000-class ImageNet classifier with logits output: dynamic batching up to 64, RGB centre
    crop of 0.875 of the shorter side resized to 224x224, then (pixel * scale - mean) / std, softmax, top 5."""
    labels_line = f"labels: {labels}\n" if labels else ""
    return f"""\
{_comment(title)}max_batch_size: 64
dynamic_batching:
  max_queue_delay_microseconds: 500
  preferred_batch_size: [16, 32]
  max_queue_size: 1024
instance_group: {{count: 1}}
{labels_line}{_comment(preprocess_note)}preprocess:
  color_mode: RGB
  background: 255
  resize: shorter_side
  width: 224
  height: 224
  crop_fraction: 0.875
  interpolation: {interpolation}
  invert: false
  scale: {scale!r}
  mean: {_floats(mean)}
  std: {_floats(std)}
  layout: NCHW
  dtype: FP32
postprocess:
  softmax: true                    # the graph outputs logits
  top_k: 5
"""


def exporter_main(
    description: str | None,
    build_and_export: Callable[[Path, int], Path],
    argv: Sequence[str] | None = None,
    *,
    out_help: str,
    seed_help: str = "seed of the random numbers: the parity-check inputs, and the weights where they are random",
) -> int:
    """The command line of an exporter module: ``--out DIR [--seed N]``, then the path and size written."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    args = parser.parse_args(argv)
    path = build_and_export(args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    input_name: str = "input",
    output_name: str = "probabilities",
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Export ``model`` (put in eval mode) with axis 0 of input and output dynamic; check and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    # The TorchScript exporter is deprecated but still supported in torch 2.13; it is chosen on purpose.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # Static "same" padding (EfficientNet) slices with constant bounds that ORT folds anyway.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamic_axes={input_name: {0: BATCH_AXIS_NAME}, output_name: {0: BATCH_AXIS_NAME}},
            do_constant_folding=True,
        )
    exported = onnx.load(str(path))
    if metadata:
        onnx.helper.set_model_props(exported, {key: str(value) for key, value in metadata.items()})
    onnx.checker.check_model(exported, full_check=True)
    onnx.save(exported, str(path))
    return exported


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    inputs: np.ndarray | Iterable[np.ndarray],
    *,
    atol: float = 1e-5,
    batch_size: int = 256,
) -> ParityReport:
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs; raise :class:`ParityError` on mismatch."""
    model.eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batches = (
        [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        if isinstance(inputs, np.ndarray)
        else list(inputs)
    )
    samples, max_abs_diff, mismatches = 0, 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            expected = model(torch.from_numpy(batch)).numpy()
            (actual,) = session.run(None, {input_name: batch})
            if actual.shape != expected.shape:
                raise ParityError(f"ONNX output shape {actual.shape} != torch output shape {expected.shape}")
            samples += len(batch)
            max_abs_diff = max(max_abs_diff, float(np.max(np.abs(actual - expected))))
            mismatches += int(np.sum(actual.argmax(axis=1) != expected.argmax(axis=1)))
    report = ParityReport(samples=samples, max_abs_diff=max_abs_diff, argmax_mismatches=mismatches)
    if max_abs_diff > atol or mismatches:
        raise ParityError(f"{onnx_path}: {report} (tolerance {atol:g}, no argmax mismatch allowed)")
    return report
