"""`onnx-serve tune`: the search against a deterministic fake bench (what it finds, within the p99 budget and the
time budget, refused points, each point measured once), the config it writes, and one short real tune of a live
in-process server through reloads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from onnx_serve.bench.tune.search import LevelResult, Measurement, Search, best_per_concurrency, confirmed
from onnx_serve.bench.tune.space import Space, TuneConfig, from_config_yaml, to_config_yaml
from onnx_serve.cli import main
from onnx_serve.core.model_config import load_model_config

from tests.helpers.inprocess import in_process_server
from tests.helpers.serving import BUNDLED_MODELS, conv_classifier_model

LEVELS = (1, 8, 32)
SHIPPED = TuneConfig(max_queue_delay_us=0, preferred_batch_sizes=(), max_batch_size=64)


class FakeBench:
    """A machine of 2 CPUs where 2 instances of 1 thread and a 1 ms queue delay serve best, a 4 ms delay serves
    even more but blows a 60 ms p99, and 2 workers cannot start. Each measurement takes 10 s of fake time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[TuneConfig] = []

    def clock(self) -> float:
        return self.now

    def measure(self, config: TuneConfig) -> Measurement:
        self.calls.append(config)
        self.now += 10.0
        if config.workers > 1:
            return Measurement(error="server exited with 2")
        parallel = {(1, 0): 1.0, (1, 1): 0.8, (1, 2): 1.0, (2, 1): 1.5, (2, 0): 1.2, (4, 0): 0.9}.get(
            (config.instance_count, config.intra_op_threads), 0.7)
        batching = {0: 1.0, 250: 1.1, 1000: 1.3, 4000: 1.6}.get(config.max_queue_delay_us, 1.2)
        batching *= 1.05 if config.preferred_batch_sizes == (8,) else 1.0
        batching *= 1.02 if config.max_batch_size == 32 else 1.0
        levels = []
        for c in LEVELS:
            rate = 100.0 * min(c, 8) * parallel * batching
            p99 = 1000.0 * c / rate + config.max_queue_delay_us / 1000 * (12 if config.max_queue_delay_us > 1000 else 1)
            levels.append(LevelResult(c, round(rate, 3), p99 / 2, p99, 500.0 / parallel, min(c, 8) / 2))
        return Measurement(tuple(levels))


def search(budget_s: float = 10_000, p99_ms: float | None = None) -> tuple[FakeBench, Search]:
    bench = FakeBench()
    return bench, Search(bench.measure, Space(cpus=2, vary_workers=True), LEVELS, budget_s, p99_ms, bench.clock)


def test_the_search_finds_the_best_configuration_within_the_p99_budget() -> None:
    bench, tuner = search(p99_ms=60.0)
    result = tuner.run(SHIPPED)
    best = result.best().config
    assert (best.instance_count, best.intra_op_threads, best.workers) == (2, 1, 1)
    assert best.max_queue_delay_us == 1000  # 4000 serves more, but its p99 is over 60 ms at c=32
    assert best.preferred_batch_sizes == (8,) and best.max_batch_size == 32
    searched = bench.calls[:-2]  # then the confirmation measures the shipped and the best config again
    assert len(searched) == len(set(searched)) == len(result.points)  # each point measured once
    assert result.confirmation is not None and bench.calls[-2:] == [SHIPPED, best]
    assert result.baseline.config == SHIPPED and result.baseline.score == 1.0
    chosen = best_per_concurrency(result.points, LEVELS, 60.0)[32]
    assert chosen is not None and chosen.config == best


def test_a_gain_that_does_not_hold_when_measured_again_is_not_confirmed() -> None:
    bench = FakeBench()
    seen: set[TuneConfig] = set()

    def lucky_once(config: TuneConfig) -> Measurement:
        """Every configuration but the shipped one serves a third as much the second time it is measured."""
        measured = bench.measure(config)
        if config in seen and config != SHIPPED:
            measured = Measurement(tuple(replace(lv, requests_per_s=lv.requests_per_s / 3)
                                         for lv in measured.levels))
        seen.add(config)
        return measured

    result = Search(lucky_once, Space(cpus=2, vary_workers=True), LEVELS, 10_000, clock=bench.clock).run(SHIPPED)
    assert result.confirmation is not None and not confirmed(result, 32, None)
    _, tuner = search()
    assert confirmed(tuner.run(SHIPPED), 32, None)


def test_without_a_p99_budget_the_longer_delay_wins() -> None:
    _, tuner = search()
    assert tuner.run(SHIPPED).best().config.max_queue_delay_us == 4000


def test_the_shipped_p99_can_be_the_budget() -> None:
    bench = FakeBench()
    tuner = Search(bench.measure, Space(cpus=2, vary_workers=True), LEVELS, 10_000, clock=bench.clock,
                   p99_of_shipped_at=32)
    result = tuner.run(SHIPPED)
    shipped_p99 = result.baseline.level(32).p99_ms  # type: ignore[union-attr]
    assert tuner.p99_ms == shipped_p99
    best = result.best()
    assert best.level(32).p99_ms <= shipped_p99 and best.score > 1.5  # type: ignore[union-attr]


def test_a_refused_configuration_scores_zero_and_the_search_goes_on() -> None:
    _, tuner = search()
    result = tuner.run(SHIPPED)
    refused = [p for p in result.points if p.measurement.error]
    assert refused and all(p.score == 0 and p.config.workers == 2 for p in refused)
    assert result.best().score > 1.5


def test_the_time_budget_stops_the_search_before_a_point_that_would_not_fit() -> None:
    bench, tuner = search(budget_s=55.0)
    result = tuner.run(SHIPPED)
    # 3 points and the confirmation's 2 (shipped and best again) fit in 55 s of 10 s points; a 4th would not
    assert result.budget_exhausted and len(result.points) == 3 and len(bench.calls) == 5 and bench.now <= 55.0
    assert result.confirmation is not None
    shipped, best = result.confirmation
    chosen = best_per_concurrency(result.points, [32], None)[32]
    assert shipped.config == SHIPPED and chosen and best.config == chosen.config and best.phase == "confirm"


def test_the_search_space_fits_the_cpus() -> None:
    options = Space(cpus=2, vary_workers=True).parallelism(SHIPPED)
    assert all(c.workers * c.instance_count * max(1, c.intra_op_threads) <= 2 for c in options)
    assert {(c.workers, c.instance_count) for c in options} == {(1, 1), (1, 2), (2, 1)}
    fixed = Space(cpus=2, vary_workers=False).parallelism(replace(SHIPPED, workers=3))  # a live server's workers
    assert {(c.workers, c.instance_count) for c in fixed} == {(3, 1)}


def test_the_written_config_keeps_every_other_key() -> None:
    raw = yaml.safe_load((BUNDLED_MODELS / "mnist-cnn" / "config.yaml").read_text())
    shipped = from_config_yaml(raw)
    assert shipped == TuneConfig(instance_count=1, max_queue_delay_us=0, max_batch_size=64)
    tuned = to_config_yaml(raw, TuneConfig(instance_count=2, intra_op_threads=1, max_queue_delay_us=500,
                                           preferred_batch_sizes=(16,), max_batch_size=32))
    assert tuned["preprocess"] == raw["preprocess"] and tuned["labels"] == raw["labels"]
    assert tuned["dynamic_batching"] == {"max_queue_delay_microseconds": 500, "max_queue_size": 1024,
                                         "preferred_batch_size": [16]}
    assert tuned["instance_group"] == {"count": 2} and tuned["session"] == {"intra_op_threads": 1}


def test_a_short_real_tune_of_a_live_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    conv_classifier_model(repository / "tiny" / "1" / "model.onnx")
    original = "max_batch_size: 16\ndynamic_batching: {max_queue_delay_microseconds: 0}\n"
    (repository / "tiny" / "config.yaml").write_text(original)
    out, report = tmp_path / "tuned.yaml", tmp_path / "tune.json"
    with in_process_server(repository, execution_providers=("CPUExecutionProvider",)) as server:
        code = main(["tune", "tiny", "--url", server.url, "--repository", str(repository), "--concurrency", "1,4",
                     "--duration", "0.45", "--warmup", "0.15", "--window", "0.15", "--budget-s", "7",
                     "--out", str(out), "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "best (no p99 budget):" in printed and "config.yaml for c=4:" in printed
    document = json.loads(report.read_text())
    assert document["mode"] == "live" and document["points"][0]["phase"] == "baseline"
    assert len(document["points"]) >= 2 or document["budget_exhausted"]  # how many fit in 7 s: the machine's say
    assert all(len(p["levels"]) == 2 and all(lv["requests_per_s"] > 0 and lv["errors"] == 0 for lv in p["levels"])
               for p in document["points"] if not p["error"])
    assert (repository / "tiny" / "config.yaml").read_text() == original  # put back: no --apply
    out.rename(repository / "tiny" / "config.yaml")
    assert load_model_config(repository / "tiny" / "config.yaml").max_batch_size in (8, 16, 32, 64)
