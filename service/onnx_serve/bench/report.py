"""Turns measured levels into numbers: a summary per level, a text table, JSON, and a throughput/latency chart."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from onnx_serve.bench.load import LevelRun

PERCENTILES = (50, 90, 95, 99)


def summarize(run: LevelRun, items_per_request: int, requests: int | None = None) -> dict[str, Any]:
    """``requests``: the successful requests when not every latency is one (h2load times HTTP answers, and a gRPC
    error is an HTTP 200 too); by default, one per latency."""
    requests = len(run.latencies_s) if requests is None else requests
    wall = run.wall_s
    latencies_ms = np.asarray(run.latencies_s, dtype=np.float64) * 1e3
    latency: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
    latency.update(mean=None, max=None)
    if len(latencies_ms):
        values = np.percentile(latencies_ms, PERCENTILES, method="inverted_cdf")  # nearest rank
        latency = {f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, values, strict=True)}
        latency.update(mean=round(float(latencies_ms.mean()), 3), max=round(float(latencies_ms.max()), 3))
    before, after = run.before, run.after
    snapshot_wall = after.wall_s - before.wall_s
    summary: dict[str, Any] = {
        "concurrency": run.concurrency,
        "requests": requests,
        "items": requests * items_per_request,
        "duration_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 2),
        "items_per_s": round(requests * items_per_request / wall, 2),
        "latency_ms": latency,
        "error_count": sum(run.errors.values()),
        "errors": dict(sorted(run.errors.items())),
        "stable": run.stable,
        "windows": {"seconds": round(run.window_s, 3),
                    "requests_per_s": [round(count / run.window_s, 1) for count in run.window_counts]},
        # CPU seconds per wall second: 1.0 is one core busy all the time.
        "client_cpu": round((after.client_cpu_s - before.client_cpu_s) / snapshot_wall, 3),
        "server_cpu": None,
        "server_rss_mb": None,
        "server": None,
    }
    # CPU per request is steadier than throughput on a busy machine: it shows what each side costs.
    client_cpu_s = after.client_cpu_s - before.client_cpu_s
    summary["client_cpu_us_per_request"] = round(client_cpu_s / requests * 1e6, 1) if requests else None
    summary["server_cpu_us_per_request"] = None
    if before.server and after.server:
        server_cpu_s = after.server.cpu_s - before.server.cpu_s
        summary["server_cpu"] = round(server_cpu_s / snapshot_wall, 3)
        summary["server_cpu_us_per_request"] = round(server_cpu_s / requests * 1e6, 1) if requests else None
        summary["server_rss_mb"] = round(after.server.rss_bytes / 2**20, 1)
    if before.model and after.model:
        summary["server"] = after.model.minus(before.model).breakdown()
    return summary


def level_label(level: dict[str, Any]) -> str:
    """How a level is named in tables and notes: c=16, or the h2load point 4x32 (connections x streams)."""
    return level.get("point") or f"c={level['concurrency']}"


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_table(levels: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one row per concurrency level."""
    with_server = any(level["server"] for level in levels)
    with_server_cpu = any(level["server_cpu"] is not None for level in levels)
    header = ["conc", "req/s", "items/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms", "errors", "stable",
              "client cpu", "us/req"]
    if with_server_cpu:
        header += ["server cpu", "us/req", "rss MiB"]
    if with_server:
        header += ["queue ms", "in ms", "infer ms", "out ms", "batch"]
    rows = [header]
    for level in levels:
        latency = level["latency_ms"]
        row = [level.get("point") or str(level["concurrency"]), _cell(level["requests_per_s"], 1),
               _cell(level["items_per_s"], 1),
               *(_cell(latency[key], 3) for key in ("p50", "p90", "p95", "p99", "max")),
               _cell(level["error_count"]), "yes" if level["stable"] else "NO", f"{level['client_cpu']:.0%}",
               _cell(level["client_cpu_us_per_request"], 0)]
        if with_server_cpu:
            cpu = level["server_cpu"]
            row += ["-" if cpu is None else f"{cpu:.0%}", _cell(level["server_cpu_us_per_request"], 0),
                    _cell(level["server_rss_mb"], 0)]
        if with_server:
            server = level["server"] or {}
            row += [_cell(server.get(key), 3) for key in ("avg_queue_ms", "avg_compute_input_ms",
                                                          "avg_compute_infer_ms", "avg_compute_output_ms")]
            row.append(_cell(server.get("avg_batch_size"), 2))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def notes_for(levels: Sequence[dict[str, Any]], cpus: float) -> list[str]:
    """Warnings a reader should see next to the numbers."""
    notes = []
    for level in levels:
        if not level["stable"]:
            rates = ", ".join(f"{r:,.0f}" for r in level["windows"]["requests_per_s"][-3:])
            notes.append(f"{level_label(level)}: not stable: the last three windows ({rates} req/s) differ by "
                         "more than 10%; measure longer (--duration) or on a quieter machine")
        if level["errors"]:
            notes.append(f"{level_label(level)}: errors {level['errors']}")
        if level["client_cpu"] >= 0.85:
            notes.append(f"{level_label(level)}: the client used {level['client_cpu']:.0%} of a core: it may be "
                         f"the bottleneck ({cpus:g} CPUs here are shared by client and server)")
    return notes


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def plot_series(path: Path, series: Sequence[tuple[str, Sequence[dict[str, Any]]]], title: str = "") -> None:
    """Throughput (x) against p99 latency (y), one line per series, each point labelled with its concurrency.
    Needs matplotlib (the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for label, levels in series:
        points = [(lv["items_per_s"], lv["latency_ms"]["p99"], lv["concurrency"]) for lv in levels
                  if lv["latency_ms"]["p99"] is not None]
        if not points:
            continue
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, c in points:
            axes.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("throughput (items/s)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title or "throughput vs p99 latency, per concurrency")
    if series:
        axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


class ProgressBar:
    """tqdm when it is installed and stderr is a terminal; otherwise a line per level on stderr."""

    def __init__(self, total_windows: int, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self._stream = stream
        self._enabled = enabled
        self._bar: Any = None
        if enabled and stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total_windows, unit="window", file=stream, leave=False, dynamic_ncols=True)
        self._label = ""

    @property
    def active(self) -> bool:
        """Whether anything is shown (a terminal): a caller can skip work that only feeds the bar."""
        return self._enabled and self._stream.isatty()

    def level(self, label: str) -> None:
        self._label = label
        if self._bar is not None:
            self._bar.set_description(label)
        elif self._enabled and self._stream.isatty():
            self._stream.write(f"\r{label} warming up...\x1b[K")
            self._stream.flush()

    def window(self, done: int, rate: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{rate:,.0f} req/s")
        elif self._enabled and self._stream.isatty():
            self._stream.write(f"\r{self._label} window {done}: {rate:,.0f} req/s\x1b[K")
            self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and self._stream.isatty():
            self._stream.write("\r\x1b[K")
            self._stream.flush()
