"""What `onnx-serve tune` prints and writes: every point measured, the best configuration within the p99 budget
at each concurrency, the diff of the chosen config.yaml against the current one, JSON and a chart."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnx_serve.bench.report import plot_series
from onnx_serve.bench.tune.search import Point, SearchResult, best_per_concurrency, requests_per_s, within


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def points_table(result: SearchResult, concurrency: Sequence[int], p99_ms: float | None) -> str:
    header = ["#", "phase", "config", "conc", "req/s", "p50 ms", "p99 ms", "cpu us/req", "batch", "ok", "score"]
    rows = [header]
    for number, point in enumerate(result.points, 1):
        if point.measurement.error:
            rows.append([str(number), point.phase, point.config.short(), "-", "refused: " +
                         point.measurement.error[:60], "", "", "", "", "", "0.00"])
            continue
        for index, c in enumerate(concurrency):
            level = point.level(c)
            first = index == 0
            rows.append([str(number) if first else "", point.phase if first else "", point.config.short() if first
                         else "", str(c), _cell(level.requests_per_s if level else None, 1),
                         _cell(level.p50_ms if level else None, 2), _cell(level.p99_ms if level else None, 2),
                         _cell(level.server_cpu_us_per_request if level else None, 0),
                         _cell(level.mean_batch if level else None, 2),
                         ("yes" if within(level, p99_ms) else "NO") + ("" if not level or level.stable else " ~"),
                         f"{point.score:.2f}" if first else ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))) for row in rows)


def best_lines(result: SearchResult, concurrency: Sequence[int], p99_ms: float | None) -> list[str]:
    baseline = result.baseline
    lines = []
    for c, point in best_per_concurrency(result.points, concurrency, p99_ms).items():
        if point is None:
            lines.append(f"c={c}: no configuration within p99 <= {p99_ms} ms")
            continue
        shipped = requests_per_s(baseline, c)
        ratio = f"{requests_per_s(point, c) / shipped:.2f} x the shipped config" if shipped else "the shipped config "\
            "is over budget"
        same = " (the shipped config itself)" if point is baseline else ""
        level = point.level(c)
        assert level is not None
        lines.append(f"c={c}: {point.config.describe()}{same}: {level.requests_per_s:,.1f} req/s, p99 "
                     f"{_cell(level.p99_ms, 2)} ms; {ratio}")
    return lines


def confirmation_line(result: SearchResult, concurrency: int) -> str:
    if result.confirmation is None:
        return "confirmation: the shipped configuration scored best; nothing to confirm"
    shipped, best = result.confirmation
    ratio = requests_per_s(best, concurrency) / requests_per_s(shipped, concurrency) \
        if requests_per_s(shipped, concurrency) else 0.0
    return (f"confirmation, measured again back to back at c={concurrency}: shipped "
            f"{requests_per_s(shipped, concurrency):,.1f} req/s, best {requests_per_s(best, concurrency):,.1f} "
            f"req/s ({best.config.short()}): {ratio:.2f} x")


def config_diff(before: str, after: str, path: str) -> str:
    lines = list(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                      f"{path} (current)", f"{path} (tuned)"))
    return "".join(lines) or "(no change: the current config is the best found)\n"


def document(result: SearchResult, concurrency: Sequence[int], p99_ms: float | None, mode: str, budget_s: float,
             chosen: Point) -> dict[str, Any]:
    def point_json(point: Point) -> dict[str, Any]:
        return {"phase": point.phase, "config": point.config.to_json(), "score": round(point.score, 4),
                "elapsed_s": round(point.elapsed_s, 2), "error": point.measurement.error,
                "levels": [{"concurrency": lv.concurrency, "requests_per_s": lv.requests_per_s, "p50_ms": lv.p50_ms,
                            "p99_ms": lv.p99_ms, "server_cpu_us_per_request": lv.server_cpu_us_per_request,
                            "mean_batch": lv.mean_batch, "stable": lv.stable, "errors": lv.errors}
                           for lv in point.measurement.levels]}

    best = best_per_concurrency(result.points, concurrency, p99_ms)
    return {"tool": "onnx-serve tune", "mode": mode, "p99_ms": p99_ms, "concurrency": list(concurrency),
            "budget_s": budget_s, "budget_exhausted": result.budget_exhausted,
            "points": [point_json(p) for p in result.points],
            "best_per_concurrency": {str(c): None if p is None else index_of(result, p) for c, p in best.items()},
            "chosen": index_of(result, chosen),
            "confirmation": None if result.confirmation is None else [point_json(p) for p in result.confirmation]}


def index_of(result: SearchResult, point: Point) -> int:
    return next(i for i, candidate in enumerate(result.points) if candidate is point)


def chart(path: Path, result: SearchResult, concurrency: Sequence[int], p99_ms: float | None, title: str) -> None:
    """The shipped config and the best at each level, as the bench's throughput-vs-p99 chart."""
    shown = [result.baseline, *(p for p in best_per_concurrency(result.points, concurrency, p99_ms).values() if p)]
    series = []
    for point in [p for i, p in enumerate(shown) if all(p is not q for q in shown[:i])]:
        label = ("shipped: " if point is result.baseline else "") + point.config.short()
        series.append((label, [{"items_per_s": lv.requests_per_s, "latency_ms": {"p99": lv.p99_ms},
                                "concurrency": lv.concurrency} for lv in point.measurement.levels]))
    plot_series(path, series, title)
