"""The gate: the INT8 model against its FP32 source on held-out samples, and both models' raw speed.

Both models run in sessions made by the server's own code (core.runtime.create_session) with the same plan, so
the predictions compared are the ones each would serve. Probabilities are the model's first output as the
Classify API scores it: softmax'd when the config says `postprocess.softmax`, or when the output is not already a
distribution (logits of a model with no config). Speed is `onnx-serve bench --raw` (bench.raw.run_raw), FP32 and
INT8 measured in turns at each batch size, so a busy machine slows both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serve.bench.raw import run_raw
from onnx_serve.core.runtime import SessionPlan, create_session
from onnx_serve.tools.quantize.progress import Progress

EVALUATION_BATCH = 32
MAX_LISTED_DISAGREEMENTS = 10
# FP32's margin between its top two probabilities: where it is small, FP32's own top-1 is nearly a tie and any
# perturbation (INT8's rounding, another resize) may flip it; agreement is also reported above each margin.
MARGINS = (0.05, 0.1, 0.2)


@dataclass(frozen=True, slots=True)
class Agreement:
    samples: int
    top1_agreement: float
    mean_abs_probability_difference: float
    max_abs_probability_difference: float
    probabilities: str  # "output" (already a distribution) or "softmax"
    fp32_accuracy: float | None
    int8_accuracy: float | None
    disagreements: tuple[str, ...]  # the first few samples whose top-1 differs
    by_margin: tuple[tuple[float, int, float | None], ...] = ()  # (FP32 top-2 margin >=, samples, agreement)

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "top1_agreement": round(self.top1_agreement, 6),
                "mean_abs_probability_difference": float(f"{self.mean_abs_probability_difference:.3g}"),
                "max_abs_probability_difference": float(f"{self.max_abs_probability_difference:.3g}"),
                "probabilities": self.probabilities,
                "fp32_accuracy": None if self.fp32_accuracy is None else round(self.fp32_accuracy, 6),
                "int8_accuracy": None if self.int8_accuracy is None else round(self.int8_accuracy, 6),
                "disagreements": list(self.disagreements),
                "agreement_by_fp32_margin": [{"margin_at_least": m, "samples": n,
                                              "top1_agreement": None if a is None else round(a, 6)}
                                             for m, n, a in self.by_margin]}


def predict(path: Path, plan: SessionPlan, tensors: np.ndarray, batch_size: int, bar: Progress) -> np.ndarray:
    """The first output for every row of `tensors`, `batch_size` rows per run."""
    session, _ = create_session(path, plan)
    name = session.get_inputs()[0].name
    outputs = []
    for start in range(0, len(tensors), batch_size):
        batch = np.ascontiguousarray(tensors[start:start + batch_size])
        outputs.append(np.asarray(session.run(None, {name: batch})[0]).reshape(len(batch), -1))
        bar.update(len(batch))
    return np.concatenate(outputs)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def is_distribution(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= -1e-6) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def compare(fp32: Path, int8: Path, plan: SessionPlan, tensors: np.ndarray, labels: np.ndarray | None,
            names: Sequence[str], batched: bool, apply_softmax: bool, progress: bool) -> Agreement:
    batch_size = EVALUATION_BATCH if batched else 1
    with Progress(2 * len(tensors), "check against FP32", progress) as bar:
        reference = predict(fp32, plan, tensors, batch_size, bar)
        candidate = predict(int8, plan, tensors, batch_size, bar)
    kind = "softmax" if apply_softmax or not is_distribution(reference) else "output"
    if kind == "softmax":
        reference, candidate = softmax(reference.astype(np.float64)), softmax(candidate.astype(np.float64))
    top_fp32, top_int8 = reference.argmax(axis=1), candidate.argmax(axis=1)
    differs = np.flatnonzero(top_fp32 != top_int8)
    ranked = np.sort(reference, axis=1)
    margin = ranked[:, -1] - ranked[:, -2] if reference.shape[1] > 1 else np.ones(len(reference))
    by_margin = tuple((m, int((margin >= m).sum()),
                       float(np.mean(top_fp32[margin >= m] == top_int8[margin >= m])) if (margin >= m).any() else None)
                      for m in MARGINS)
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return Agreement(
        samples=len(tensors),
        top1_agreement=float(np.mean(top_fp32 == top_int8)),
        mean_abs_probability_difference=float(difference.mean()),
        max_abs_probability_difference=float(difference.max()),
        probabilities=kind,
        fp32_accuracy=None if labels is None else float(np.mean(top_fp32 == labels)),
        int8_accuracy=None if labels is None else float(np.mean(top_int8 == labels)),
        disagreements=tuple(names[i] for i in differs[:MAX_LISTED_DISAGREEMENTS]),
        by_margin=by_margin,
    )


def speed(fp32: Path, int8: Path, batch_sizes: Sequence[int], duration_s: float, intra_op_threads: int,
          progress: bool) -> dict[str, Any]:
    """Raw ORT images/s of both models at each batch size (one after the other at each), and at each's best."""
    rows: list[dict[str, Any]] = []
    with Progress(2 * len(batch_sizes), "raw ORT speed", progress) as bar:
        for batch_size in batch_sizes:
            row: dict[str, Any] = {"batch_size": batch_size}
            for key, path in (("fp32", fp32), ("int8", int8)):
                document = run_raw(path, [batch_size], duration_s, min(0.5, duration_s / 2), intra_op_threads)
                result = document["results"][0]
                row["batch_size"] = result["batch_size"]  # 1 for a model without a batch axis
                row[f"{key}_images_per_s"] = result["items_per_s"]
                row[f"{key}_p50_ms"] = result["latency_ms"]["p50"]
                row["intra_op_threads"] = document["intra_op_threads"]
                bar.update()
            row["speedup"] = round(row["int8_images_per_s"] / row["fp32_images_per_s"], 3)
            rows.append(row)
            if row["batch_size"] != batch_size:  # no batch axis: one size only
                break
    best_fp32 = max(rows, key=lambda r: r["fp32_images_per_s"])
    best_int8 = max(rows, key=lambda r: r["int8_images_per_s"])
    return {
        "tool": "onnx-serve bench --raw (FP32 and INT8 in turns at each batch size)",
        "duration_s": duration_s,
        "intra_op_threads": rows[0]["intra_op_threads"],
        "batches": rows,
        "best": {"fp32_batch_size": best_fp32["batch_size"], "fp32_images_per_s": best_fp32["fp32_images_per_s"],
                 "int8_batch_size": best_int8["batch_size"], "int8_images_per_s": best_int8["int8_images_per_s"],
                 "speedup": round(best_int8["int8_images_per_s"] / best_fp32["fp32_images_per_s"], 3)},
    }
