"""Renders bench-results/int8.json (benchmarks/int8.py) as the "INT8 quantization" section of docs/benchmarks.md:
measured figures only; the analysis around them is written by hand in the docs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

TARGETS = {  # issue #18: (model, what, threshold)
    "mnist": [("accuracy", "INT8 accuracy within 0.2 points of FP32 (1,000 validation digits)", -0.002)],
    "efficientnet": [("agreement", "top-1 agreement with FP32 >= 99%", 0.99),
                     ("served_ratio", "served INT8 >= 1.7 x served FP32 at c=8", 1.7),
                     ("served_vs_raw", "served INT8 >= 0.95 x raw INT8 at its best batch", 0.95)],
    "resnet18": [("served_ratio", "served INT8 >= 2 x served FP32 at c=8", 2.0)],
}
TITLES = {"mnist": "mnist-cnn (bundled)", "efficientnet": "EfficientNet-Lite0", "resnet18": "ResNet-18 benchmark model"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} x ({min(values):.2f}-{max(values):.2f})"


def _level(document: dict[str, Any]) -> dict[str, Any]:
    return dict(document["levels"][-1])


def figures(model: dict[str, Any]) -> dict[str, Any]:
    """The numbers the targets are judged on."""
    main = model["methods"]["minmax"]
    check = main["check"]
    fp32, int8 = _level(model["served"]["fp32"]), _level(model["served"]["int8"])
    raw_best_int8 = max(row["int8"] for row in model["raw"])  # the best pass: other load only slows a run down
    accuracy = None if check["fp32_accuracy"] is None else check["int8_accuracy"] - check["fp32_accuracy"]
    return {"agreement": check["top1_agreement"], "accuracy": accuracy,
            "served_ratio": int8["items_per_s"] / fp32["items_per_s"],
            "served_vs_raw": int8["items_per_s"] / raw_best_int8, "raw_best_int8": raw_best_int8,
            "fp32": fp32, "int8": int8}


def _methods_table(models: dict[str, Any]) -> list[str]:
    rows = ["| model | method | top-1 agreement | FP32 accuracy | INT8 accuracy | mean abs prob. diff "
            "| quantize run s |", "|---|---|---|---|---|---|---|"]
    for key, model in models.items():
        for method, run in model["methods"].items():
            check = run["check"]
            rows.append(f"| {TITLES[key]} | {method} | {_pct(check['top1_agreement'])} | "
                        f"{_pct(check['fp32_accuracy'])} | {_pct(check['int8_accuracy'])} | "
                        f"{check['mean_abs_probability_difference']:.2g} | {run['wall_s']:.0f} |")
    return rows


def _model_section(key: str, model: dict[str, Any]) -> list[str]:
    main, numbers = model["methods"]["minmax"], figures(model)
    check, coverage = main["check"], main["coverage"]
    out = [f"### {TITLES[key]}", "", f"{check['samples']:,} held-out samples (`{main['holdout']['folder']}`), "
           f"calibration on {main['calibration']['samples']:,} (`{main['calibration']['folder']}`), MinMax.", "",
           "| | FP32 | INT8 | INT8 / FP32 |", "|---|---|---|---|",
           f"| top-1 agreement with FP32 | | {_pct(check['top1_agreement'])} | |"]
    if check["fp32_accuracy"] is not None:
        out.append(f"| accuracy | {_pct(check['fp32_accuracy'])} | {_pct(check['int8_accuracy'])} | "
                   f"{100 * numbers['accuracy']:+.2f} points |")
    out.append(f"| mean abs probability difference | | {check['mean_abs_probability_difference']:.2g} | |")
    for bucket in check["agreement_by_fp32_margin"]:
        out.append(f"| top-1 agreement where FP32's top-2 margin >= {bucket['margin_at_least']:g} | "
                   f"{bucket['samples']:,} samples | {_pct(bucket['top1_agreement'])} | |")
    for batch in sorted({row["batch_size"] for row in model["raw"]}):
        rows = [row for row in model["raw"] if row["batch_size"] == batch]
        fp32_median, int8_median = (statistics.median(r[k] for r in rows) for k in ("fp32", "int8"))
        out.append(f"| raw ORT images/s, batch {batch} (median of {len(rows)} rounds; ratio range) | "
                   f"{fp32_median:,.1f} | {int8_median:,.1f} | {_spread([r['speedup'] for r in rows])} |")
    for row in model.get("paired", []):
        out.append(f"| paired runs, batch {row['batch_size']} (FP32 and INT8 in turns, {row['pairs']} pairs, median) | "
                   f"{row['fp32_images_per_s']:,.1f} | {row['int8_images_per_s']:,.1f} | {row['speedup']:.2f} x |")
    fp32, int8 = numbers["fp32"], numbers["int8"]
    level = fp32["concurrency"]
    out += [f"| served images/s, c={level} (best of {len(int8['passes_items_per_s'])} passes) | "
            f"{fp32['items_per_s']:,.1f} | {int8['items_per_s']:,.1f} | {numbers['served_ratio']:.2f} x |",
            f"| served p99 ms, c={level} | {fp32['latency_ms']['p99']:.2f} | {int8['latency_ms']['p99']:.2f} | |",
            f"| server CPU us/request, c={level} | {fp32['server_cpu_us_per_request'] or 0:,.0f} | "
            f"{int8['server_cpu_us_per_request'] or 0:,.0f} | |",
            f"| served INT8 / raw INT8 at its best batch | | {numbers['served_vs_raw']:.2f} x | |",
            f"| model file MiB | {main['sizes']['fp32_bytes'] / 2**20:.1f} | "
            f"{main['sizes']['int8_bytes'] / 2**20:.1f} | |",
            "", f"Op coverage: INT8 {_ops(coverage['quantized_ops'])}; float {_ops(coverage['float_ops']) or 'none'}. "
            f"Compute nodes left in float after ORT's QDQ fusion: {len(coverage['unfused_compute_nodes'])}.", ""]
    return out


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def _profile(key: str, model: dict[str, Any]) -> list[str]:
    fp32, int8 = model["profiles"]["fp32"], model["profiles"]["int8"]
    out = [f"**{TITLES[key]}**, batch {model['profile_batch']}, {fp32['intra_op_threads']} intra-op threads: "
           f"{fp32['total_ms']:.2f} ms FP32, {int8['total_ms']:.2f} ms INT8 per run (kernel time).", "",
           "| FP32 kernel | nodes | ms | INT8 kernel | nodes | ms |", "|---|---|---|---|---|---|"]
    left, right = list(fp32["ops"].items())[:8], list(int8["ops"].items())[:8]
    for i in range(max(len(left), len(right))):
        cells = []
        for side in (left, right):
            cells += [f"`{side[i][0]}`", str(side[i][1]["nodes"]), f"{side[i][1]['ms']:.3f}"] if i < len(side) \
                else ["", "", ""]
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def render(document: dict[str, Any]) -> str:
    models = document["models"]
    out = ["## INT8 quantization (issue #18)", "",
           f"Generated by `python -m benchmarks.int8` in {document['wall_s']} s (JSON in `bench-results/int8.json`); "
           f"load average {document['load_at_start']:.2f} at start, {document['load_at_end']:.2f} at end.", "",
           "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for key, model in models.items():
        numbers = figures(model)
        for name, text, threshold in TARGETS.get(key, []):
            value = numbers[name]
            shown = f"{100 * value:+.2f} points" if name == "accuracy" else (
                _pct(value) if name == "agreement" else f"{value:.2f} x")
            out.append(f"| {TITLES[key]}: {text} | {shown} | {'yes' if value >= threshold else '**no**'} |")
    out += ["", "### Calibration method", "", *_methods_table(models), ""]
    for key, model in models.items():
        out += _model_section(key, model)
    out += ["### Where the time goes (ONNX Runtime per-kernel profile)", ""]
    for key, model in models.items():
        out += _profile(key, model)
    return "\n".join(out)
