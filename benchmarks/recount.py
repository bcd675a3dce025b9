"""Recounts a bench from the server's own Prometheus counters where its ModelStatistics cannot vouch for it.

`onnx-serve bench --driver h2load` checks h2load's HTTP 200s against the model's ModelStatistics (a gRPC error is
an HTTP 200 too). Two servers of the run defeat that:
- onnx-serve with `--workers N`: the statistics are read on one gRPC connection, which reaches one worker
  (SO_REUSEPORT balances connections), whose counters hold about 1/N of the successes, so the driver calls the
  rest GRPC_NOT_OK. The supervisor's /metrics sum every worker's counters;
- Triton through PyTriton: PyTriton restricts Triton's statistics extension to a random access token
  (`UNAVAILABLE: This protocol is restricted`), so the driver has no statistics and no mean batch. Triton's
  /metrics (port + 2) are open.

So these servers' /metrics are scraped before and after the bench: onnx-serve's `onnx_serve_requests_total{code}`,
`onnx_serve_inferences_total` and `onnx_serve_batch_size_count`, Triton's `nv_inference_request_success`,
`_failure`, `nv_inference_count` and `nv_inference_exec_count`. A point's requests are h2load's 2xx less the
requests the server did not answer OK during the whole bench (check, warm-up, point; CANCELLED excepted: the
requests h2load abandons when its time is up), its per-request figures are rescaled to that count, and its
mean batch is the whole bench's (warm-up included). A Python-client bench keeps its own counts (the client reads
every answer) and gets the mean batch when it measured one level only.

The driver's check before the first point has the same blind spot with workers: its `h2load -n 1` request may
reach the worker it does not read, and it refuses the body; benchmarks.run then runs the bench again (up to
CHECK_ATTEMPTS times).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
ABANDONED = "CANCELLED"


@dataclass
class Totals:
    """A server's counters for one model: requests by gRPC code, samples inferred, batches executed."""

    codes: Counter[str] = field(default_factory=Counter)
    inferences: int = 0
    executions: int = 0

    def minus(self, earlier: Totals) -> Totals:
        codes = Counter({code: self.codes[code] - earlier.codes[code] for code in self.codes})
        return Totals(+codes, self.inferences - earlier.inferences, self.executions - earlier.executions)


def _samples(metrics_text: str, model: str) -> list[tuple[str, dict[str, str], int]]:
    found = []
    for line in metrics_text.splitlines():
        sample = _SAMPLE.match(line.strip())
        if sample:
            labels = dict(_LABEL.findall(sample.group("labels")))
            if labels.get("model") == model:
                found.append((sample.group("name"), labels, round(float(sample.group("value")))))
    return found


def onnx_serve_totals(metrics_text: str, model: str) -> Totals:
    totals = Totals()
    for name, labels, value in _samples(metrics_text, model):
        if name == "onnx_serve_requests_total":
            totals.codes[labels.get("code", "?")] += value
        elif name == "onnx_serve_inferences_total":
            totals.inferences += value
        elif name == "onnx_serve_batch_size_count":
            totals.executions += value
    return totals


def triton_totals(metrics_text: str, model: str) -> Totals:
    totals = Totals()
    names = {"nv_inference_request_success": "OK", "nv_inference_request_failure": "FAILURE"}
    for name, _, value in _samples(metrics_text, model):
        if name in names:
            totals.codes[names[name]] += value
        elif name == "nv_inference_count":
            totals.inferences += value
        elif name == "nv_inference_exec_count":
            totals.executions += value
    return totals


TOTALS = {"onnx-serve": onnx_serve_totals, "triton": triton_totals}


def recount(document: dict[str, Any], before: Totals, after: Totals, source: str) -> None:
    """Rewrites `document` (one bench's JSON) in place; `source` says whose /metrics, for the report."""
    delta = after.minus(before)
    not_ok = {code: count for code, count in delta.codes.items() if code not in ("OK", ABANDONED)}
    batch = round(delta.inferences / delta.executions, 3) if delta.executions else None
    levels = document["levels"]
    for level in levels:
        level["recounted"] = {"source": source, "server_codes_whole_bench": dict(delta.codes),
                              "driver_requests": level["requests"], "driver_errors": level["errors"]}
        if level.get("driver") == "h2load":
            _recount_h2load(level, not_ok, document.get("items_per_request", 1))
        if batch is not None and (len(levels) == 1 or level.get("driver") == "h2load"):
            server = level.get("server") or {}
            level["server"] = {**server, "avg_batch_size": batch,
                               "scope": f"mean batch from {source}, the whole bench (warm-up included)"
                               + ("; the rest: one worker's ModelStatistics" if server else "")}
    document["notes"] = [note for note in document.get("notes", [])
                         if "GRPC_NOT_OK" not in note and "has no ModelStatistics" not in note]
    document["notes"].append(f"counted with {source} (benchmarks/recount.py)")


def _recount_h2load(level: dict[str, Any], not_ok: dict[str, int], items_per_request: int) -> None:
    old = level["requests"]
    requests = max(0, level["h2load"]["requests"]["succeeded"] - sum(not_ok.values()))
    level["errors"] = {f"SERVER_{code}": count for code, count in not_ok.items()}
    level["error_count"] = sum(not_ok.values())
    level["requests"] = requests
    level["items"] = requests * items_per_request
    wall = level["duration_s"]
    level["requests_per_s"] = round(requests / wall, 2) if wall else 0.0
    level["items_per_s"] = round(level["items"] / wall, 2) if wall else 0.0
    for key in ("server_cpu_us_per_request", "client_cpu_us_per_request"):
        if level.get(key) is not None and old and requests:
            level[key] = round(level[key] * old / requests, 1)
