"""The Prometheus test helper really runs Prometheus, which scrapes a prometheus_client exposition."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.helpers.prometheus import (
    PROMETHEUS_BINARY,
    PrometheusError,
    query,
    query_value,
    rule_groups,
    running_prometheus,
    wait_for_scrape,
)

JOB = "helper-probe"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"

if PROMETHEUS_BINARY is None:
    if os.environ.get("CI"):
        pytest.fail("prometheus is not installed; .ci/run must install the Debian package `prometheus`",
                    pytrace=False)
    pytest.skip("prometheus binary not on PATH (apt-get install prometheus)", allow_module_level=True)


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[str, Counter]]:
    """A prometheus_client HTTP exposition on 127.0.0.1 with one counter."""
    registry = CollectorRegistry()
    counter = Counter("helper_probe_events", "Events counted by the probe exporter.", registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(exporter: tuple[str, Counter], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target, _ = exporter
    tmp_path: Path = tmp_path_factory.mktemp("prometheus-helper")
    with running_prometheus([target], tmp_path, job=JOB, rule_files=[RULES]) as base_url:
        yield base_url


@pytest.mark.timeout(30)
def test_prometheus_scrapes_the_exposition_and_answers_exact_counts(
        exporter: tuple[str, Counter], prometheus: str) -> None:
    target, counter = exporter
    for _ in range(3):
        counter.inc()

    up = wait_for_scrape(prometheus, job=JOB)

    assert [series["metric"]["instance"] for series in up] == [target]
    assert query_value(prometheus, f'helper_probe_events_total{{job="{JOB}"}}') == 3

    # A later increment is visible after the next scrape: what an end-to-end test relies on.
    counter.inc(2)
    wait_for_scrape(prometheus, job=JOB)
    assert query_value(prometheus, f'helper_probe_events_total{{job="{JOB}"}}') == 5
    assert query_value(prometheus, "scalar(sum(helper_probe_events_total))") == 5


def test_bad_queries_raise_with_prometheus_message(prometheus: str) -> None:
    with pytest.raises(PrometheusError, match="bad_data"):
        query(prometheus, "sum(")
    with pytest.raises(PrometheusError, match="returned 0 series"):
        query_value(prometheus, "no_such_metric_anywhere")


def test_wait_for_scrape_reports_unscraped_job(prometheus: str) -> None:
    with pytest.raises(PrometheusError, match="not scraped successfully"):
        wait_for_scrape(prometheus, job="no-such-job", timeout_s=0.5)


def test_rule_files_are_loaded_and_evaluate(prometheus: str) -> None:
    groups = {group["name"]: group for group in rule_groups(prometheus)}
    assert {"onnx-serve.recording", "onnx-serve.alerts"} <= set(groups)
    wait_for_scrape(prometheus, job=JOB)  # at least one evaluation has happened since start
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
