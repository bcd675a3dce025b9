"""The search of `onnx-serve tune`: coarse-to-fine coordinate descent over the space of space.py, within a time
budget, from the shipped configuration.

Coarse: one knob at a time, most influential first (the processes x instances x threads split of the CPUs,
then the queue delay, the preferred batch sizes, the largest batch), every value of that knob tried with the
others at the best point so far; a value is kept when it beats the best by MIN_GAIN (smaller differences are
the noise of a shared machine). Fine: around the best queue delay. Each point is one `measure` call (in the
tool, one bench sweep with the bench's stability rule); the search stops before a point that would not fit
the budget, judged by what points have cost so far. Then the shipped and the best configuration are measured
again, back to back, so that the gain claimed does not rest on one measurement of each (two points the budget
keeps room for).

A point's score is its throughput relative to the shipped configuration's, averaged over the concurrency levels;
a level whose p99 is over the budget, or that had errors, counts 0. The search is pure: `measure` and `clock`
are injected, so the tests drive it with a deterministic fake bench.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnx_serve.bench.tune.space import Space, TuneConfig

MIN_GAIN = 0.03


@dataclass(frozen=True, slots=True)
class LevelResult:
    concurrency: int
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    server_cpu_us_per_request: float | None = None
    mean_batch: float | None = None
    stable: bool = True
    errors: int = 0

    @classmethod
    def from_bench(cls, level: dict[str, Any]) -> LevelResult:
        """From one level of `onnx-serve bench`'s JSON."""
        server = level.get("server") or {}
        return cls(level["concurrency"], level["requests_per_s"], level["latency_ms"]["p50"],
                   level["latency_ms"]["p99"], level.get("server_cpu_us_per_request"), server.get("avg_batch_size"),
                   level["stable"], level["error_count"])


@dataclass(frozen=True, slots=True)
class Measurement:
    levels: tuple[LevelResult, ...] = ()
    error: str = ""  # the configuration could not be served (the server refused it): no levels


@dataclass(slots=True)
class Point:
    config: TuneConfig
    phase: str  # baseline | a knob's name | fine
    measurement: Measurement
    elapsed_s: float
    score: float = 0.0

    def level(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.measurement.levels if lv.concurrency == concurrency), None)


@dataclass(slots=True)
class SearchResult:
    points: list[Point] = field(default_factory=list)
    budget_exhausted: bool = False
    # The shipped configuration and the best one measured again, back to back, after the search: on a shared
    # machine one measurement of the baseline may fall on a busy or a quiet moment, and every score leans on it.
    confirmation: tuple[Point, Point] | None = None

    @property
    def baseline(self) -> Point:
        return self.points[0]

    def best(self) -> Point:
        return max(self.points, key=lambda p: p.score)


Measure = Callable[[TuneConfig], Measurement]


def within(level: LevelResult | None, p99_ms: float | None) -> bool:
    """A level that counts: answered without errors, and within the p99 budget when there is one."""
    return (level is not None and not level.errors and level.requests_per_s > 0
            and (p99_ms is None or (level.p99_ms is not None and level.p99_ms <= p99_ms)))


def score(measurement: Measurement, baseline: Measurement | None, concurrency: Sequence[int],
          p99_ms: float | None) -> float:
    """Mean over the levels of throughput / the baseline's (1.0 = as good as shipped); 0 for a level over budget."""
    if measurement.error:
        return 0.0
    parts = []
    for c in concurrency:
        level = next((lv for lv in measurement.levels if lv.concurrency == c), None)
        reference = next((lv for lv in baseline.levels if lv.concurrency == c), None) if baseline else None
        base = reference.requests_per_s if reference and reference.requests_per_s > 0 else None
        if not within(level, p99_ms) or level is None:
            parts.append(0.0)
        else:
            parts.append(level.requests_per_s / base if base else 1.0)
    return sum(parts) / len(parts) if parts else 0.0


class Search:
    def __init__(self, measure: Measure, space: Space, concurrency: Sequence[int], budget_s: float,
                 p99_ms: float | None = None, clock: Callable[[], float] = time.monotonic,
                 on_point: Callable[[Point], None] | None = None, p99_of_shipped_at: int | None = None) -> None:
        """`p99_of_shipped_at`: the budget is the shipped configuration's own p99 at that level, once measured
        (no point may be slower than what ships)."""
        self.measure, self.space, self.concurrency = measure, space, list(concurrency)
        self.budget_s, self.p99_ms, self.clock, self.on_point = budget_s, p99_ms, clock, on_point
        self.p99_of_shipped_at = p99_of_shipped_at
        self.confirm = True
        self.target = max(self.concurrency)  # the level whose best is confirmed (and written, by the CLI)
        self.result = SearchResult()
        self._started = 0.0
        self._measured: dict[TuneConfig, Point] = {}

    def run(self, shipped: TuneConfig) -> SearchResult:
        self._started = self.clock()
        best = self._try(shipped, "baseline")
        assert best is not None  # the baseline is always measured
        for phase, values in self.space.dimensions():
            best = self._best_of(best, phase, values(best.config))
            if self.result.budget_exhausted:
                break
        else:
            best = self._best_of(best, "fine", self.space.finer_delays(best.config))
        # What is confirmed is what the tool writes: the best within the budget at the target level.
        best = best_per_concurrency(self.result.points, [self.target], self.p99_ms)[self.target] or self.result.baseline
        if self.confirm and best is not self.result.baseline:
            self.result.confirmation = (self._again(self.result.baseline), self._again(best))
        return self.result

    def _again(self, point: Point) -> Point:
        started = self.clock()
        measurement = self.measure(point.config)
        return Point(point.config, "confirm", measurement, self.clock() - started,
                     score(measurement, self.result.baseline.measurement, self.concurrency, self.p99_ms))

    def _best_of(self, best: Point, phase: str, candidates: Sequence[TuneConfig]) -> Point:
        for config in candidates:
            point = self._try(config, phase)
            if point is None:
                break
            if point.score > best.score * (1 + MIN_GAIN):
                best = point
        return best

    def _try(self, config: TuneConfig, phase: str) -> Point | None:
        """Measures a point (once: a point seen before is reused), or None once the budget cannot fit it."""
        if config in self._measured:
            return self._measured[config]
        points = self.result.points
        if points:
            spent = self.clock() - self._started
            estimate = sum(p.elapsed_s for p in points) / len(points)
            reserve = 2 * estimate if self.confirm else 0.0  # the confirmation's two points
            if spent + estimate + reserve > self.budget_s:
                self.result.budget_exhausted = True
                return None
        started = self.clock()
        measurement = self.measure(config)
        baseline = points[0].measurement if points else None
        if baseline is None and self.p99_of_shipped_at is not None:
            shipped = next((lv for lv in measurement.levels if lv.concurrency == self.p99_of_shipped_at), None)
            self.p99_ms = shipped.p99_ms if shipped else None
        point = Point(config, phase, measurement, self.clock() - started,
                      score(measurement, baseline or measurement, self.concurrency, self.p99_ms))
        points.append(point)
        self._measured[config] = point
        if self.on_point:
            self.on_point(point)
        return point


def confirmed(result: SearchResult, concurrency: int, p99_ms: float | None) -> bool:
    """Whether the chosen configuration still beats the shipped one by MIN_GAIN, within the budget, when both
    were measured again back to back (True when there was nothing to confirm)."""
    if result.confirmation is None:
        return True
    shipped, best = result.confirmation
    level = best.level(concurrency)
    return within(level, p99_ms) and requests_per_s(best, concurrency) > requests_per_s(shipped, concurrency) * (
        1 + MIN_GAIN)


def best_per_concurrency(points: Sequence[Point], concurrency: Sequence[int],
                         p99_ms: float | None) -> dict[int, Point | None]:
    """The point with the most requests/s within the budget at each level (None: no point is within it)."""
    best: dict[int, Point | None] = {}
    for c in concurrency:
        fits = [p for p in points if within(p.level(c), p99_ms)]
        best[c] = max(fits, key=lambda p: requests_per_s(p, c)) if fits else None
    return best


def requests_per_s(point: Point, concurrency: int) -> float:
    level = point.level(concurrency)
    return level.requests_per_s if level else 0.0
