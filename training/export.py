"""Export a torch model to ONNX with a dynamic batch axis, stamp provenance, and prove parity.

Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra packages (onnxscript) and
writes the same bytes for the same weights, which keeps a committed model reproducible.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Iterable, Mapping
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
