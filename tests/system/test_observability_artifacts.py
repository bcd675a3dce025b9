"""Prometheus rules, scrape config and Grafana dashboard in deploy/ are valid and use only our metrics.

Syntax and behaviour are checked by promtool itself (`check config`, `check rules`, `test rules`);
dashboard queries are checked by promtool too, as recording rules in a throw-away rule file.

Metric names are extracted from PromQL by `metric_names()` below, which relies on the grammar rather than
a guess: after string literals, label matchers `{...}`, ranges `[...]`, and the label lists of
by/without/on/ignoring/group_left/group_right are removed, an identifier in PromQL is a function or
aggregation when `(` follows it, a keyword (and, or, unless, bool, offset, ...) or a metric name. Numbers,
durations and Grafana variables ($model, ${datasource}) are skipped. Because promtool has already parsed
every expression, this only has to be right on valid PromQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from onnx_serve.core.metrics import METRIC_NAMES, Metrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "onnx-serve-dashboard.json"
HTTP_APP = REPO / "service" / "onnx_serve" / "edges" / "http" / "app.py"

PROMETHEUS_SYNTHETIC = {"up"}  # written by Prometheus for every target


def registered_families() -> dict[str, str]:
    """onnx_serve_* metric families the server registers (onnx_serve.core.metrics), name -> type."""
    return {family.name: family.type for family in Metrics().registry.collect()
            if family.name.startswith("onnx_serve_")}


def exposed_series_names() -> set[str]:
    """Series names the server exposes: counters as _total, histograms as _bucket/_count/_sum."""
    names: set[str] = set()
    for name, kind in registered_families().items():
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


def test_registered_metrics_are_the_contract_names() -> None:
    """METRIC_NAMES (the contract dashboards and alerts rely on) is exactly what the server registers."""
    families = registered_families()
    registered = {f"{name}_total" if kind == "counter" else name for name, kind in families.items()}
    assert registered == set(METRIC_NAMES)


# ---------------------------------------------------------------------------------------------------
# PromQL metric-name extraction (method in the module docstring)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*"([^"]*)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<variable>\$\{[^}]*\}|\$\w+)"  # Grafana template variables
    r"|(?P<number>\d[\w.]*(?:[eE][+-]?\d+)?|\.\d\w*)"  # numbers, durations (5m), hex
    r"|(?P<identifier>[A-Za-z_:][\w:]*)"
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}


def metric_names(promql: str) -> set[str]:
    """Metric names selected by a PromQL expression."""
    # {__name__="x"} selects x; a regex on __name__ cannot be checked, so it is returned as is (and fails).
    names = {value if operator == "=" else f"__name__{operator}{value}"
             for operator, value in _NAME_MATCHER.findall(promql)}
    text = _STRING.sub('""', promql)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _TOKEN.finditer(text):
        word = match.group("identifier")
        if word is None or word.lower() in _KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(word)
    return names


@pytest.mark.parametrize(("promql", "expected"), [
    ('sum by (model, code) (rate(onnx_serve_requests_total{code!~"OK|x{1}"}[5m]))', {"onnx_serve_requests_total"}),
    ("histogram_quantile(0.99, sum(rate(a_bucket[$__rate_interval])) by (le))", {"a_bucket"}),
    ("a / on (job) group_left (version) b offset 5m > bool 0.5", {"a", "b"}),
    ("sum without (instance) (x) unless ignoring (code) y or vector(0)", {"x", "y"}),
    ('{__name__="x"} + rec:ord:ed_rate5m[1h:5m] @ end()', {"x", "rec:ord:ed_rate5m"}),
    ('{__name__=~"onnx_.*"}', {'__name__=~onnx_.*'}),
    ('count(z{model=~"${model}"}) * 1e3 + 0x1F - Inf', {"z"}),
])
def test_metric_name_extraction(promql: str, expected: set[str]) -> None:
    assert metric_names(promql) == expected


# ---------------------------------------------------------------------------------------------------
# promtool

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed; .ci/run must install the Debian package `prometheus`",
                        pytrace=False)
        pytest.skip("promtool not on PATH (apt-get install prometheus)")
    return path


def run_promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run([promtool(), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_rules_pass_promtool_check_with_lint() -> None:
    run_promtool("check", "rules", "--lint=all", "--lint-fatal", RULES)


def test_rules_pass_their_promtool_unit_tests() -> None:
    output = run_promtool("test", "rules", RULES_TEST)
    assert "SUCCESS" in output


def test_scrape_config_passes_promtool_check() -> None:
    run_promtool("check", "config", SCRAPE_CONFIG)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query, with Grafana's variables replaced by values."""
    rules = [{"record": f"dashboard:panel_{panel_id}_{ref_id}:check", "expr": grafana_to_promql(expr)}
             for panel_id, ref_id, expr in dashboard_queries(load_dashboard())]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", rule_file, cwd=tmp_path)


# ---------------------------------------------------------------------------------------------------
# rules: structure and names

def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    assert len(alerts()) >= 8
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert alert["annotations"].get(annotation, "").strip(), f"{alert['alert']}: no {annotation}"
        assert alert.get("for"), f"{alert['alert']}: fires on a single evaluation"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_required_alerts_exist() -> None:
    expressions = {alert["alert"]: alert["expr"] for alert in alerts()}
    assert {"OnnxServeServerErrorRatioHigh", "OnnxServeClientErrorRatioHigh", "OnnxServeP99LatencyHigh",
            "OnnxServeQueueBacklog", "OnnxServeRequestsRejected", "OnnxServeModelNotReady",
            "OnnxServeExecutionProviderFallback", "OnnxServeTargetDown"} <= set(expressions)


def test_rules_use_only_contract_metrics_and_their_own_recordings() -> None:
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    allowed = exposed_series_names() | PROMETHEUS_SYNTHETIC | recorded
    for rule in load_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule.get('alert') or rule.get('record')}: no metric found in {rule['expr']!r}"
        assert used <= allowed, f"{rule.get('alert') or rule.get('record')}: unknown {used - allowed}"


def test_commented_kubernetes_scrape_job_is_valid_yaml() -> None:
    """The Kubernetes job is a comment (Debian's promtool lacks Kubernetes discovery); keep it loadable."""
    lines = SCRAPE_CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - job_name: onnx-serve-pods"))
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line[len("  # "):])
    (job,) = yaml.safe_load("\n".join(block))
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    target_labels = {relabel.get("target_label") for relabel in job["relabel_configs"]}
    assert {"__address__", "namespace", "pod", "accelerator"} <= target_labels


# ---------------------------------------------------------------------------------------------------
# dashboard

def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(panel["id"], target["refId"], target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval and template variables the way Grafana would at query time."""
    expr = re.sub(r"\$(?:__rate_interval|__interval|__range)\b", "5m", expr)
    return re.sub(r"\$\{\w+\}|\$\w+", ".*", expr)


def variable_query_metrics(query: str) -> set[str]:
    """Metrics named by a Grafana Prometheus variable query such as label_values(metric{...}, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    if match:
        return metric_names(match.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()  # label_values(label) names no metric
    return metric_names(re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", query))


def test_dashboard_has_grafana_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"]
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"])
    assert dashboard["schemaVersion"] >= 39
    assert "__inputs" not in dashboard, "the data source is a variable, not an import-time input"

    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert isinstance(panel["id"], int) and panel["type"] and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y"))
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refId"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty expr"


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_uses_only_contract_metrics() -> None:
    dashboard = load_dashboard()
    allowed = exposed_series_names() | PROMETHEUS_SYNTHETIC
    for panel_id, ref_id, expr in dashboard_queries(dashboard):
        used = metric_names(expr)
        assert used, f"panel {panel_id} {ref_id}: no metric in {expr!r}"
        assert used <= allowed, f"panel {panel_id} {ref_id}: unknown metrics {used - allowed}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            assert variable_query_metrics(query) <= allowed, variable["name"]


def test_dashboard_covers_the_required_views() -> None:
    dashboard = load_dashboard()
    queries = [expr for _, _, expr in dashboard_queries(dashboard)]
    used = set().union(*(metric_names(expr) for expr in queries))
    assert {"onnx_serve_requests_total", "onnx_serve_request_duration_seconds_bucket", "onnx_serve_queue_depth",
            "onnx_serve_batch_size_bucket", "onnx_serve_model_ready", "onnx_serve_inference_duration_seconds_bucket",
            "onnx_serve_inflight_requests", "onnx_serve_execution_provider_info"} <= used
    latency = [expr for expr in queries if "onnx_serve_request_duration_seconds_bucket" in expr]
    for quantile in ("0.5", "0.9", "0.99"):
        assert any(f"histogram_quantile({quantile}," in expr for expr in latency), f"no p{quantile} latency"
    assert any(re.search(r"by \([^)]*\bcode\b", expr) for expr in queries), "no errors-by-code panel"
    assert any(panel["type"] == "heatmap" for panel in dashboard["panels"]), "no batch size heatmap"


# ---------------------------------------------------------------------------------------------------
# the HTTP edge

def http_api_labels() -> set[str]:
    """The `api` label values the HTTP edge gives its requests (edges/http/app.py passes them to the data plane)."""
    return set(re.findall(r'api="(\w+)"', HTTP_APP.read_text()))


def test_dashboard_splits_traffic_and_errors_by_edge() -> None:
    assert http_api_labels() == {"http_infer", "http_classify"}
    queries = [expr for _, _, expr in dashboard_queries(load_dashboard())]
    http = [expr for expr in queries if 'api=~"http_.*"' in expr]
    grpc = [expr for expr in queries if 'api!~"http_.*"' in expr]
    assert len(http) >= 2 and len(grpc) >= 2, "requests/s and server error ratio, for each edge"


def test_alerts_are_tested_on_http_traffic() -> None:
    """The rules count every api alike; rules_test.yml proves it with HTTP-only series for the error and
    latency alerts."""
    tested: set[str] = set()
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        series = " ".join(item["series"] for item in group["input_series"])
        if any(f'api="{label}"' in series for label in http_api_labels()):
            tested |= {case["alertname"] for case in group.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {"OnnxServeServerErrorRatioHigh", "OnnxServeP99LatencyHigh"} <= tested
