"""`onnx-serve bench --raw MODEL`: in-process ONNX Runtime at several batch sizes, no server, no gRPC.

The session is made by the server's own code (onnx_serve.core.runtime.create_session) with the server's thread
settings: intra-op threads sized to the CPU quota, spinning off, and the model's config.yaml session
options when the model sits in a repository. The best images/s is the ceiling a server can approach.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx_serve.core.model_config import ModelConfig, load_model_config
from onnx_serve.core.runtime import SessionPlan, create_session, signature_of
from onnx_serve.core.settings import cpu_quota, default_intra_op_threads, provider_name
from onnx_serve.types import example_feeds

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True, slots=True)
class RawModel:
    path: Path
    config: ModelConfig


def resolve_model(target: Path) -> RawModel:
    """Accepts a .onnx file, a model directory (models/NAME: its highest version) or a version directory.
    A config.yaml next to the versions supplies the session options, as it does for the server."""
    path = target
    if path.is_dir():
        if (path / "model.onnx").is_file():
            path = path / "model.onnx"
        else:
            latest = latest_model_file(path)
            if latest is None:
                raise FileNotFoundError(f"{target}: no model.onnx and no <version>/model.onnx inside")
            path = latest
    if not path.is_file():
        raise FileNotFoundError(f"{target}: no such model file")
    config_path = path.parent.parent / "config.yaml"
    in_repository = path.name == "model.onnx" and path.parent.name.isdigit()
    return RawModel(path, load_model_config(config_path) if in_repository else ModelConfig())


def latest_model_file(model_dir: Path) -> Path | None:
    """The model.onnx of a model directory's highest version, versions compared as numbers (10 is after 9, as
    the server sees them); None when no version directory holds one."""
    versions = [d for d in model_dir.iterdir() if d.name.isdigit() and (d / "model.onnx").is_file()]
    return max(versions, key=lambda d: int(d.name)) / "model.onnx" if versions else None


def run_raw(target: Path, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, duration_s: float = 3.0,
            warmup_s: float = 0.5, intra_op_threads: int = 0, providers: Sequence[str] = ("cpu",),
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    model = resolve_model(target)
    session_options = model.config.session
    threads = intra_op_threads or session_options.intra_op_threads or default_intra_op_threads(1, 1)
    plan = SessionPlan(providers=tuple(provider_name(p) for p in providers), strict_providers=False,
                       options=session_options, intra_op_threads=threads)
    session, got = create_session(model.path, plan)
    signature = signature_of(session)
    batched = signature.has_batch_axis()
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    for batch_size in (batch_sizes if batched else (1,)):
        if progress:
            progress(f"batch {batch_size}")
        feeds = example_feeds(signature.inputs, batch_size, rng)
        warm_until = time.perf_counter() + warmup_s
        session.run(None, feeds)
        while time.perf_counter() < warm_until:
            session.run(None, feeds)
        latencies: list[float] = []
        start = time.perf_counter()
        stop = start + duration_s
        now = start
        while now < stop or len(latencies) < 3:
            session.run(None, feeds)
            latencies.append(time.perf_counter() - now)
            now = time.perf_counter()
        elapsed = now - start
        items = len(latencies) * batch_size
        ms = np.asarray(latencies) * 1e3
        results.append({
            "batch_size": batch_size,
            "runs": len(latencies),
            "items_per_s": round(items / elapsed, 2),
            "runs_per_s": round(len(latencies) / elapsed, 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50, method="inverted_cdf")), 4),
                           "p99": round(float(np.percentile(ms, 99, method="inverted_cdf")), 4)},
        })
    best = max(results, key=lambda r: r["items_per_s"])
    return {
        "tool": "onnx-serve bench --raw",
        "model": str(model.path),
        "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in signature.inputs],
        "batch_axis": batched,
        "providers": got,
        "intra_op_threads": threads,
        "inter_op_threads": session_options.inter_op_threads or 1,
        "allow_spinning": session_options.allow_spinning,
        "cpu_quota": cpu_quota(),
        "duration_s": duration_s,
        "results": results,
        "best": {"batch_size": best["batch_size"], "items_per_s": best["items_per_s"]},
    }


def format_raw(document: dict[str, Any]) -> str:
    rows = [["batch", "images/s", "runs/s", "p50 ms", "p99 ms"]]
    for result in document["results"]:
        rows.append([str(result["batch_size"]), f"{result['items_per_s']:,.1f}", f"{result['runs_per_s']:,.1f}",
                     f"{result['latency_ms']['p50']:.3f}", f"{result['latency_ms']['p99']:.3f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    best = document["best"]
    return (f"{document['model']}: in-process ONNX Runtime on {', '.join(document['providers'])}, "
            f"{document['intra_op_threads']} intra-op thread(s), spinning "
            f"{'on' if document['allow_spinning'] else 'off'}\n{table}\n"
            f"ceiling: {best['items_per_s']:,.1f} images/s at batch {best['batch_size']}")
