"""A real Prometheus server for tests: start it on 127.0.0.1, let it scrape targets, query its HTTP API.

Needs the `prometheus` binary on PATH (Debian package `prometheus`). Only the standard library is used.
Prometheus is ready within a second, but its first scrape comes about 5 s after start (its discovery
manager hands new targets to the scrapers every 5 s): start it before sending the traffic to measure.

    with running_prometheus([f"127.0.0.1:{metrics_port}"], tmp_path) as prometheus_url:
        ...  # send requests to the service
        wait_for_scrape(prometheus_url)  # a scrape that started after the requests finished
        assert query_value(prometheus_url, 'sum(onnx_serve_requests_total{code="OK"})') == 5
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROMETHEUS_BINARY = shutil.which("prometheus")
DEFAULT_JOB = "onnx-serve"
_HTTP_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.1


class PrometheusError(RuntimeError):
    """Prometheus did not start, did not scrape in time, or rejected a query."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, targets: list[str], job: str, scrape_interval: str,
                 rule_files: list[Path] | None = None) -> None:
    """Write a prometheus.yml scraping `targets` (host:port) at /metrics. JSON is valid YAML."""
    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(rule_file).resolve()) for rule_file in rule_files or []],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                            "static_configs": [{"targets": list(targets)}]}],
    }
    path.write_text(json.dumps(config, indent=2))


@contextlib.contextmanager
def running_prometheus(targets: list[str], tmp_path: Path, job: str = DEFAULT_JOB,
                       scrape_interval: str = "1s", rule_files: list[Path] | None = None,
                       startup_timeout_s: float = 15.0) -> Iterator[str]:
    """Run Prometheus scraping `targets` under job `job`; yield its base URL (http://127.0.0.1:PORT).

    `rule_files` (e.g. deploy/prometheus/rules.yml) are evaluated every `scrape_interval`. Its config,
    data and log live in `tmp_path / "prometheus"`; the log is quoted in every error.
    """
    if PROMETHEUS_BINARY is None:
        raise PrometheusError("the prometheus binary is not on PATH (Debian package `prometheus`)")
    workdir = tmp_path / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    write_config(config_path, targets, job, scrape_interval, rule_files)
    log_path = workdir / "prometheus.log"

    # The free port can be taken between free_port() and Prometheus binding it: then try another one.
    for attempt in range(3):
        base_url, process = _start(config_path, workdir, log_path)
        try:
            _wait_ready(base_url, process, log_path, startup_timeout_s)
            break
        except PrometheusError:
            _stop(process)
            if attempt == 2 or "address already in use" not in _log_tail(log_path):
                raise
    try:
        yield base_url
    finally:
        _stop(process)


def query(base_url: str, promql: str, at: float | None = None) -> list[Any]:
    """Evaluate an instant query; return `data.result` (a list of {"metric", "value"} for vectors)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 400/422/503 carry a JSON error body
        try:
            body = json.load(error)
        except ValueError:
            raise PrometheusError(f"query {promql!r}: HTTP {error.code}") from error
    if body.get("status") != "success":
        raise PrometheusError(f"query {promql!r}: {body.get('errorType')}: {body.get('error')}")
    return list(body["data"]["result"])


def query_value(base_url: str, promql: str) -> float:
    """The single number an instant query returns (a scalar, or a vector of exactly one sample)."""
    result = query(base_url, promql)
    if len(result) == 2 and not isinstance(result[0], dict):  # scalar: [timestamp, "value"]
        return float(result[1])
    if len(result) != 1:
        raise PrometheusError(f"query {promql!r} returned {len(result)} series, expected 1: {result}")
    return float(result[0]["value"][1])


def rule_groups(base_url: str) -> list[dict[str, Any]]:
    """The loaded rule groups with each rule's health and last error (GET /api/v1/rules)."""
    with urllib.request.urlopen(f"{base_url}/api/v1/rules", timeout=_HTTP_TIMEOUT_S) as response:
        return list(json.load(response)["data"]["groups"])


def wait_for_scrape(base_url: str, job: str = DEFAULT_JOB, after: float | None = None,
                    timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """Wait until every target of `job` was scraped successfully by a scrape that started after `after`
    (a Unix time; default: now), so that what the targets exposed before this call is in Prometheus.

    Returns the `up` series. Raises PrometheusError, with the targets' last errors, on timeout.
    """
    after = time.time() if after is None else after
    selector = f"up{{job={json.dumps(job)}}}"
    deadline = time.monotonic() + timeout_s
    while True:
        expected = len(_active_targets(base_url, job))
        scraped_at = query(base_url, f"timestamp({selector})")
        up = query(base_url, selector)
        if (expected and len(scraped_at) == expected
                and all(float(s["value"][1]) >= after for s in scraped_at)
                and all(s["value"][1] == "1" for s in up)):
            return up
        if time.monotonic() > deadline:
            targets = [{"url": t.get("scrapeUrl"), "health": t.get("health"), "lastError": t.get("lastError")}
                       for t in _active_targets(base_url, job)]
            raise PrometheusError(f"job {job!r} not scraped successfully after {after:.3f} within "
                                  f"{timeout_s}s; up={up}; targets: {targets}")
        time.sleep(_POLL_INTERVAL_S)


def _start(config_path: Path, workdir: Path, log_path: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    command = [
        str(PROMETHEUS_BINARY),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", process


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrometheusError(f"prometheus exited with {process.returncode}:\n{_log_tail(log_path)}")
        # Connection refused while starting, 503 while not ready: both are OSErrors.
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base_url}/-/ready",
                                                                  timeout=_HTTP_TIMEOUT_S) as response:
            if response.status == 200:
                return
        time.sleep(_POLL_INTERVAL_S)
    raise PrometheusError(f"prometheus not ready after {timeout_s}s:\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _log_tail(log_path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _active_targets(base_url: str, job: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base_url}/api/v1/targets?state=active", timeout=_HTTP_TIMEOUT_S) as response:
        active = json.load(response)["data"]["activeTargets"]
    return [target for target in active if target.get("labels", {}).get("job") == job]
