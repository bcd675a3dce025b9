"""The figures of docs/benchmarks.md's "INT8 quantization" section, measured in one run.

    python -m benchmarks.int8                     # all three models (~15 min on 2 busy cores)
    python -m benchmarks.int8 --only mnist        # the bundled model only (~3 min)

For each model: `onnx-serve quantize` with each calibration method (the gate off, to see every figure), then,
with the default method, raw ONNX Runtime FP32 and INT8 in turns (`onnx-serve bench --raw`'s run_raw, several
rounds, for the spread), both versions served by `onnx-serve serve` and measured by `onnx-serve bench` (two
passes in rotated order, each level's best pass), and an ONNX Runtime per-op profile of both. Models: the
bundled mnist-cnn (calibrated on training digits, checked on its 1,000 validation digits), EfficientNet-Lite0
(`python -m training.efficientnet`) and the ResNet-18 benchmark model (`python -m training.resnet18`), both
calibrated and checked on views of scikit-image's photos (benchmarks/int8_data.py). Everything is written under
--work (default /tmp/onnx-serve-int8); the JSON lands in bench-results/int8.json, the section in
bench-results/int8.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.int8_data import mnist_folders, photo_folders
from benchmarks.int8_doc import render
from benchmarks.int8_profile import ort_op_profile, paired_speed
from benchmarks.models import ROOT
from benchmarks.run import Bench, python_levels, run_bench
from benchmarks.servers import start_onnx_serve

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"


@dataclass(frozen=True)
class Subject:
    key: str
    name: str  # the model's directory name
    source: Path  # its FP32 model directory
    calibration: Path
    holdout: Path
    samples: int
    raw_batches: tuple[int, ...]
    served_levels: tuple[int, ...]
    profile_batch: int
    methods: tuple[str, ...] = METHODS


def timing(duration: float, warmup: float, window: float) -> argparse.Namespace:
    return argparse.Namespace(duration=duration, warmup=warmup, window=window)


def quantize(subject: Subject, work: Path, method: str, speed_s: float, reuse: bool = False) -> dict[str, Any]:
    """A quantize run on a copy of the model directory (version 1 linked, not copied); the gate is off so that
    every method's figures are seen. `reuse`: an earlier run's report and model, when both are there."""
    repository = work / "quantize" / f"{subject.key}-{method}"
    out = work / f"quantize-{subject.key}-{method}.json"
    if reuse and out.is_file() and (repository / subject.name / "2" / "model.onnx").is_file():
        print(f"== {subject.key} {method}: reusing {out}", flush=True)
        return dict(json.loads(out.read_text()), wall_s=json.loads(out.read_text()).get("wall_s", 0),
                    int8_model=str(repository / subject.name / "2" / "model.onnx"))
    shutil.rmtree(repository, ignore_errors=True)
    model_dir = repository / subject.name
    model_dir.mkdir(parents=True)
    for item in subject.source.iterdir():
        if item.name == "1":
            (model_dir / "1").symlink_to(item.resolve())
        elif item.is_file() and not item.name.startswith("quantize-"):
            shutil.copy(item, model_dir / item.name)
    args = ["quantize", str(model_dir), "--calibration", str(subject.calibration), "--holdout", str(subject.holdout),
            "--samples", str(subject.samples), "--method", method, "--min-agreement", "0", "--batch-sizes",
            ",".join(map(str, subject.raw_batches[:2])), "--speed-duration", str(speed_s), "--no-progress"]
    print(f"== {subject.key} {method}: onnx-serve {' '.join(args)}", flush=True)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", *args, "--report", str(out)], cwd=ROOT,
                               text=True, capture_output=True)
    print(completed.stdout, completed.stderr[-2000:], sep="\n", flush=True)
    if completed.returncode not in (0, 1):
        raise RuntimeError(f"quantize {subject.key} {method} failed ({completed.returncode})")
    document = json.loads(out.read_text())
    document["wall_s"] = round(time.monotonic() - started, 1)
    document["int8_model"] = str(model_dir / "2" / "model.onnx")
    out.write_text(json.dumps(document, indent=2) + "\n")  # with its wall time, for --reuse
    return document


def raw_rounds(fp32: Path, int8: Path, batches: Sequence[int], rounds: int, duration: float) -> list[dict[str, Any]]:
    """images/s of both at each batch size, in turns, `rounds` times (who goes first alternates)."""
    from onnx_serve.bench.raw import run_raw

    out = []
    for number in range(rounds):
        for batch in batches:
            order = [("fp32", fp32), ("int8", int8)]
            row: dict[str, Any] = {"round": number, "batch_size": batch}
            for key, path in order if number % 2 == 0 else order[::-1]:
                result = run_raw(path, [batch], duration, 0.5)["results"][0]
                row[key] = result["items_per_s"]
            row["speedup"] = round(row["int8"] / row["fp32"], 3)
            print(f"   raw round {number} batch {batch}: fp32 {row['fp32']:,.1f}, int8 {row['int8']:,.1f} img/s "
                  f"({row['speedup']:.2f} x)", flush=True)
            out.append(row)
    return out


def one_version_repository(work: Path, subject: Subject, label: str, version_dir: Path) -> Path:
    """A repository serving one version of the model, with the model's own config.yaml and labels."""
    repository = work / "served" / f"{subject.key}-{label}"
    shutil.rmtree(repository, ignore_errors=True)
    model_dir = repository / subject.name
    model_dir.mkdir(parents=True)
    for item in subject.source.iterdir():
        if item.is_file() and item.name in ("config.yaml", "labels.txt"):
            shutil.copy(item, model_dir / item.name)
    (model_dir / version_dir.name).symlink_to(version_dir.resolve())
    return repository


def served(subject: Subject, work: Path, int8_version: Path, passes: int, clock: argparse.Namespace,
           extra: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Both versions served and benched, `passes` times in rotated order; each level keeps its best pass."""
    repositories = {"fp32": one_version_repository(work, subject, "fp32", subject.source / "1"),
                    "int8": one_version_repository(work, subject, "int8", int8_version)}
    results, logs = work / "bench", work / "logs"
    results.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    best: dict[str, dict[str, Any]] = {}
    for number in range(passes):
        for label in ("fp32", "int8") if number % 2 == 0 else ("int8", "fp32"):
            server = start_onnx_serve(f"{subject.key}-{label}", repositories[label], subject.name, logs)
            try:
                bench = Bench(f"{subject.key}-{label}-{number}", subject.name,
                              python_levels(subject.served_levels, *extra))
                document = run_bench(results, bench, server, clock)
            finally:
                server.stop()
            for level in document["levels"]:
                level["passes_items_per_s"] = [level["items_per_s"]]
            if label not in best:
                best[label] = document
                continue
            merged = []
            for old, new in zip(best[label]["levels"], document["levels"], strict=True):
                keep = new if new["items_per_s"] > old["items_per_s"] else old
                keep["passes_items_per_s"] = old["passes_items_per_s"] + [new["items_per_s"]]
                merged.append(keep)
            best[label]["levels"] = merged
    return best


def build_model(module: str, out: Path, model_dir: Path) -> Path:
    if not (model_dir / "1" / "model.onnx").is_file():
        print(f"== building {model_dir} (python -m {module} --out {out})", flush=True)
        subprocess.run([sys.executable, "-m", module, "--out", str(out)], cwd=ROOT, check=True)
    return model_dir


def subjects(work: Path, only: set[str], quick: bool) -> list[Subject]:
    chosen = []
    if "mnist" in only:
        calibration, validation = mnist_folders(work)
        chosen.append(Subject("mnist", "mnist-cnn", ROOT / "models" / "mnist-cnn", calibration, validation, 256,
                              (1, 64), (32,), 64))
    if only & {"efficientnet", "resnet18"}:
        calibration, holdout = photo_folders(work)
        if "efficientnet" in only:
            model = build_model("training.efficientnet", work / "models" / "efficientnet-lite0",
                                work / "models" / "efficientnet-lite0")
            chosen.append(Subject("efficientnet", "efficientnet-lite0", model, calibration, holdout, 120,
                                  (1, 8, 16, 32) if not quick else (1, 8), (8,), 8))
        if "resnet18" in only:
            model = build_model("training.resnet18", work / "models", work / "models" / "resnet18")
            chosen.append(Subject("resnet18", "resnet18", model, calibration, holdout, 120,
                                  (1, 8, 16) if not quick else (1, 8), (8,), 8, (DEFAULT_METHOD,)))
    return chosen


def measure(subject: Subject, work: Path, quick: bool, reuse: bool) -> dict[str, Any]:
    methods = {m: quantize(subject, work, m, 1.0, reuse) for m in ((DEFAULT_METHOD,) if quick else subject.methods)}
    main = methods[DEFAULT_METHOD]
    int8_model = Path(main["int8_model"])
    fp32_model = subject.source / "1" / "model.onnx"
    rounds = raw_rounds(fp32_model, int8_model, subject.raw_batches, 1 if quick else 3, 1.0 if quick else 2.5)
    paired = []
    for batch in subject.raw_batches:
        paired.append(paired_speed(fp32_model, int8_model, batch, 2.0 if quick else 8.0))
        print(f"   paired batch {batch}: {paired[-1]}", flush=True)
    heavy = subject.key != "mnist"
    clock = timing(4.0, 1.0, 1.0) if quick else (timing(12.0, 3.0, 3.0) if heavy else timing(6.0, 2.0, 1.5))
    serving = served(subject, work, int8_model.parent, 1 if quick else 2, clock)
    profiles = {label: ort_op_profile(path, subject.profile_batch, 5 if heavy else 200)
                for label, path in (("fp32", fp32_model), ("int8", int8_model))}
    return {"methods": methods, "raw": rounds, "paired": paired, "served": serving, "profiles": profiles,
            "profile_batch": subject.profile_batch}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="mnist,efficientnet,resnet18", help="comma-separated models to measure")
    parser.add_argument("--quick", action="store_true", help="one method, one round, short levels (a smoke run)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the quantized models and reports of an earlier run in --work (speed runs again)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "onnx-serve-int8")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
                                "load_at_start": os.getloadavg()[0], "models": {}}
    for subject in subjects(args.work, {part.strip() for part in args.only.split(",")}, args.quick):
        document["models"][subject.key] = {"name": subject.name, **measure(subject, args.work, args.quick, args.reuse)}
    document["load_at_end"] = os.getloadavg()[0]
    document["wall_s"] = round(time.monotonic() - started)
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    (results / "int8.json").write_text(json.dumps(document, indent=2) + "\n")
    (results / "int8.md").write_text(render(document))
    print(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
