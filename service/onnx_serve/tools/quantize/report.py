"""What a quantization run tells: the JSON report written next to the new version, the section it appends to
the model card (README.md in the model directory), and the summary it prints."""

from __future__ import annotations

import json
import platform
import textwrap
from pathlib import Path
from typing import Any

import onnxruntime as ort

CPU_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def host() -> dict[str, Any]:
    """The CPU the figures were measured on: INT8's gain depends on its dot-product instructions."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu": model, "int8_dot_product": sorted(flags.intersection(CPU_INT8_FLAGS)) or None,
            "onnxruntime": ort.__version__}


def report_path(model_dir: Path, version: int) -> Path:
    return model_dir / f"quantize-{version}.json"


def write_report(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def figures_table(document: dict[str, Any]) -> str:
    """FP32 against INT8 as a Markdown table (the model card's and the summary's)."""
    check, speed, sizes = document["check"], document["speed"], document["sizes"]
    source, version = document["source_version"], document["version"]
    rows = [f"| | FP32 (version {source}) | INT8 (version {version}) |", "|---|---|---|",
            f"| top-1 agreement with FP32 | | {_percent(check['top1_agreement'])} |"]
    if check["fp32_accuracy"] is not None:
        rows.append(f"| accuracy | {_percent(check['fp32_accuracy'])} | {_percent(check['int8_accuracy'])} |")
    rows.append(f"| mean abs probability difference | | {check['mean_abs_probability_difference']:.2g} |")
    for bucket in check.get("agreement_by_fp32_margin", []):
        if bucket["samples"] and bucket["samples"] < check["samples"]:
            rows.append(f"| top-1 agreement where FP32's top-2 margin >= {bucket['margin_at_least']:g} "
                        f"({bucket['samples']:,} samples) | | {_percent(bucket['top1_agreement'])} |")
    for row in speed["batches"]:
        rows.append(f"| raw ORT images/s, batch {row['batch_size']} | {row['fp32_images_per_s']:,.1f} | "
                    f"{row['int8_images_per_s']:,.1f} ({row['speedup']:.2f} x) |")
    best = speed["best"]
    rows.append(f"| raw ORT images/s at the best batch | {best['fp32_images_per_s']:,.1f} (batch "
                f"{best['fp32_batch_size']}) | {best['int8_images_per_s']:,.1f} (batch {best['int8_batch_size']}; "
                f"{best['speedup']:.2f} x) |")
    rows.append(f"| model file | {_mib(sizes['fp32_bytes'])} | {_mib(sizes['int8_bytes'])} |")
    return "\n".join(rows)


def _coverage_line(coverage: dict[str, Any]) -> str:
    quantized = ", ".join(f"{op} {n}" for op, n in coverage["quantized_ops"].items()) or "none"
    kept = ", ".join(f"{op} {n}" for op, n in coverage["float_ops"].items()) or "none"
    unfused = coverage["unfused_compute_nodes"]
    fusion = (f"{len(unfused)} compute node(s) still run in float on dequantized inputs: {', '.join(unfused[:5])}"
              if unfused else "every quantized compute op runs as an INT8 kernel")
    return f"Ops in INT8: {quantized}; in float: {kept}. After ONNX Runtime's QDQ fusion, {fusion}."


def card_section(document: dict[str, Any]) -> str:
    """The model card's section for one written version."""
    q, check = document["quantization"], document["check"]
    source, version = document["source_version"], document["version"]
    calibration, holdout, cpu = document["calibration"], document["holdout"], document["host"]
    dot = ", ".join(cpu["int8_dot_product"]) if cpu["int8_dot_product"] else "no VNNI: AVX2 INT8 kernels"
    method = METHOD_NAMES.get(q["calibration_method"], q["calibration_method"])
    intro = (f"`{version}/model.onnx` is version {source} quantized to INT8 ({q['format']}; weights {q['weights']}; "
             f"activations {q['activations']}), with {method} calibration on {calibration['samples']:,} samples of "
             f"`{calibration['folder']}` through {document['inputs']}. It was checked on {check['samples']:,} held-out "
             f"samples of `{holdout['folder']}` before it was written (gate: top-1 agreement >= "
             f"{_percent(document['min_agreement'])}). Speed: {cpu['cpu']} ({dot}), "
             f"{document['speed']['intra_op_threads']} intra-op thread(s).")
    after = (f"{_coverage_line(document['coverage'])} Report: `{report_path(Path(), version).name}`. It serves as the "
             "latest version, with this directory's config.yaml; to serve FP32 again, set "
             f"`version_policy: {{specific: {{versions: [{source}]}}}}`.")
    return (f"\n## INT8 version {version} (`onnx-serve quantize`, {document['created'][:10]})\n\n"
            f"{textwrap.fill(intro, 110)}\n\n{figures_table(document)}\n\n{textwrap.fill(after, 110)}\n\n"
            f"```sh\n{document['command']}\n```\n")


def append_card_section(model_dir: Path, document: dict[str, Any]) -> Path:
    card = model_dir / "README.md"
    existing = card.read_text() if card.exists() else f"# {model_dir.name}\n"
    card.write_text(existing.rstrip("\n") + "\n" + card_section(document))
    return card


def summary(document: dict[str, Any]) -> str:
    """What the command prints: the decision first, then the figures."""
    check = document["check"]
    verdict = (f"wrote version {document['version']} ({document['written_to']})" if document["written"]
               else f"refused: {document['reason']}; nothing written")
    lines = [f"{document['model']}: INT8 of version {document['source_version']}: {verdict}",
             f"held-out samples: {check['samples']:,}; top-1 agreement {_percent(check['top1_agreement'])} "
             f"(minimum {_percent(document['min_agreement'])})", "", figures_table(document), "",
             _coverage_line(document["coverage"])]
    if check["disagreements"]:
        lines.append("top-1 differs on: " + ", ".join(check["disagreements"]))
    if not document["host"]["int8_dot_product"]:
        lines.append("note: this CPU has no VNNI: ONNX Runtime's INT8 kernels gain less here than on AVX-512 VNNI")
    return "\n".join(lines)
