"""docs/benchmarks.md's rendering (benchmarks/doc.py, targets.py, carry.py, recount.py) from a fixture of
results: issue #15's targets table, the blocks carried over from the file it replaces, and the recount of an
h2load point against several workers. Nothing is measured here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks.carry import ANALYSIS_BEGIN, ANALYSIS_END, APPENDED_BEGIN, PLACEHOLDER, carried_blocks
from benchmarks.doc import render
from benchmarks.http_doc import BEGIN as HTTP_EDGE_BEGIN
from benchmarks.http_doc import END as HTTP_EDGE_END
from benchmarks.recount import onnx_serve_totals, recount, triton_totals
from benchmarks.run import Runs
from benchmarks.tables import Doc
from benchmarks.targets import summary, target_rows


def level(concurrency: int, rate: float, *, p50: float = 1.0, p99: float = 5.0, server_us: float | None = None,
          batch: float | None = None, rss: float | None = None, point: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "concurrency": concurrency, "requests": int(rate * 6), "items_per_s": rate, "requests_per_s": rate,
        "duration_s": 6.0, "latency_ms": {"p50": p50, "p90": p99, "p99": p99, "mean": p50, "max": p99},
        "error_count": 0, "errors": {}, "stable": True, "windows": {"seconds": 1.5, "requests_per_s": [rate] * 4},
        "client_cpu": 0.3, "client_cpu_us_per_request": 100.0, "server_cpu": 1.2 if server_us else None,
        "server_cpu_us_per_request": server_us, "server_rss_mb": rss,
        "server": {"avg_batch_size": batch, "avg_queue_ms": 0.1} if batch else None,
        "passes_items_per_s": [rate * 0.9, rate]}
    if point:
        found.update(point=point, driver="h2load")
    return found


def run(*levels: dict[str, Any], server_key: str = "") -> dict[str, Any]:
    return {"levels": list(levels), "command": "onnx-serve bench ...", "server_key": server_key, "notes": []}


def h2load(rate: float, **extra: Any) -> dict[str, Any]:
    return run(level(128, rate, point="4x32", **extra))


@pytest.fixture
def state() -> Runs:
    """Figures chosen so each target's verdict is known: see test_every_target_row_is_a_ratio_of_this_run."""
    raw_results = [{"batch_size": b, "items_per_s": r, "latency_ms": {"p50": 1.0}} for b, r in ((1, 80.0), (8, 100.0))]
    return Runs(
        settings={"command": "python scripts/run_benchmarks.py", "elapsed_s": 800, "duration_s": 6.0,
                  "h2load_duration_s": 6.0, "warmup_s": 2.0, "window_s": 1.5, "repeat": 2, "h2load_point": "4x32",
                  "mnist_source": "models/mnist-cnn", "mnist_bundled": True,
                  "mnist_batching": {"max_queue_delay_microseconds": 0, "max_queue_size": 1024},
                  "machine": {"cpu_model": "test CPU", "nproc": 2, "cpu_quota": 2.0, "memory_gib": 8, "kernel": "k",
                              "onnx_serve": "0.1.0", "python": "3.11", "onnxruntime": "1", "grpcio": "1",
                              "protobuf": "6", "numpy": "2", "h2load": "1.52", "peers": {"mlserver": "1.7.1"}}},
        runs={
            "h2load-onnx-serve": h2load(4000.0, server_us=300.0, batch=20.0, rss=120.0),
            "h2load-onnx-serve-2-workers": h2load(4800.0, server_us=330.0, batch=8.0, rss=250.0),
            "h2load-pytriton": h2load(3000.0, server_us=500.0, batch=64.0),  # 4,800 / 3,000 = 1.6 >= 1.5
            "h2load-null": h2load(8000.0, server_us=150.0),  # 4,800 / 8,000 = 0.6 < 0.8; CPU 300 / 150 = 2 > 1.31
            "onnx-serve": run(level(1, 800.0, p50=1.1), level(8, 2000.0), level(32, 3000.0), server_key="onnx-serve"),
            "onnx-serve-stream": run(level(32, 3300.0)),  # 1.1 x < 1.3
            "null": run(level(1, 1400.0, p50=0.95), level(32, 5000.0)),  # 1.1 <= 0.95 + 0.2
            "mlserver": run(level(32, 1000.0)), "mlserver-batching": run(level(32, 1100.0)),  # 3000 / 1100 >= 2.5
            "onnx-serve-resnet18": run(level(1, 60.0), level(8, 96.0)),  # 0.96 x raw best, 96 / 80 = 1.2 x Triton
            "pytriton-resnet18": run(level(8, 80.0)),
        },
        raw={"resnet18": {"results": raw_results, "best": raw_results[1], "command": "onnx-serve bench --raw ..."}},
        servers={"onnx-serve": {"startup_s": 0.9, "rss_mb": 120.0}})


def find(state: Runs, start: str) -> list[str]:
    """The [measured, met] cells of the one target row whose name starts with `start`."""
    matches = [row[1:] for row in target_rows(Doc(state)) if row[0].startswith(start)]
    assert len(matches) == 1, (start, [row[0] for row in target_rows(Doc(state))])
    return matches[0]


def test_every_target_row_is_a_ratio_of_this_run(state: Runs) -> None:
    assert find(state, "C client 4x32: onnx-serve (best of 1 and 2 workers) >= 1.5 x Triton") == [
        "4,800 / 3,000 = 1.60 x (1 worker 4,000, 2 workers 4,800)", "yes"]
    assert find(state, "C client 4x32: onnx-serve (best of 1 and 2 workers) >= 0.8 x")[1] == "**no**"
    assert find(state, "C client 4x32: server CPU per request, 1 worker <= 220")[1] == "**no** (not deciding)"
    assert find(state, "C client 4x32: server CPU per request, 1 worker / the do-nothing") == ["300 / 150 = 2.00",
                                                                                             "**no**"]
    assert find(state, "C client 4x32 (128 in flight), 1 worker: mean batch >= 16")[1] == "yes"
    assert find(state, "C client 4x32: --workers 2 >= 1.1") == ["4,800 / 4,000 = 1.20 x", "yes"]
    assert find(state, "Python client c=32: onnx-serve >= 2.5 x MLServer") == [
        "3,000 / 1,100 = 2.73 x (batching off 1,000, adaptive batching 1,100)", "yes"]
    assert find(state, "Python client c=1: p50") == ["1.100 ms vs 0.950 + 0.2 ms", "yes"]
    assert find(state, "Python client c=32: ModelStreamInfer")[1] == "**no**"
    assert find(state, "ResNet-18 c=8: served >= 0.95") == ["96.0 / 100.0 = 0.96 x (batch 8)", "yes"]
    assert find(state, "ResNet-18 c=8 (Python client): served >= 1.15") == ["96.0 / 80.0 = 1.20 x", "yes"]
    assert find(state, "RSS under load <= 150 MiB")[1] == "yes"
    assert summary(target_rows(Doc(state))) == "8 of 11 targets met."  # the absolute CPU row does not count


def test_the_cpu_ratio_decides_against_the_reference_machine(state: Runs) -> None:
    state.runs["h2load-onnx-serve"] = h2load(4000.0, server_us=250.0, batch=20.0)  # above 220 us, but ...
    state.runs["h2load-null"] = h2load(8000.0, server_us=200.0)  # ... this machine is slower: 1.25 <= 1.31
    assert find(state, "C client 4x32: server CPU per request, 1 worker <= 220")[1] == "**no** (not deciding)"
    assert find(state, "C client 4x32: server CPU per request, 1 worker / the do-nothing server's <= 220/168 = 1.31"
                ) == ["250 / 200 = 1.25", "yes"]


def test_a_configured_delay_or_a_missing_run_is_not_met(state: Runs) -> None:
    state.settings["mnist_batching"] = {"max_queue_delay_microseconds": 500}
    del state.runs["h2load-pytriton"]
    assert find(state, "C client 4x32 (128 in flight)") == ["20.0 (max_queue_delay_microseconds: 500)", "**no**"]
    assert find(state, "C client 4x32: onnx-serve (best of 1 and 2 workers) >= 1.5")[1] == "-"
    assert summary(target_rows(Doc(state))) == "6 of 11 targets met, 1 not measured."


EXISTING = f"""# Benchmarks

old generated text

{ANALYSIS_BEGIN}
### Why the missed targets are missed

- hand-written words
{ANALYSIS_END}

## MNIST CNN, old tables

{APPENDED_BEGIN}

{HTTP_EDGE_BEGIN}
## HTTP edge (issue #13 §4)
figures
{HTTP_EDGE_END}

## INT8 quantization (issue #18)
int8 words
"""


def test_the_report_carries_the_analysis_and_the_appended_sections(state: Runs, tmp_path: Path) -> None:
    text = render(state, tmp_path / "benchmarks.png", tmp_path, carried_blocks(EXISTING))
    assert "## Targets (issue #15)" in text and "Targets (issue #4)" not in text
    assert "- hand-written words" in text and "old generated text" not in text
    assert text.index("## Targets (issue #15)") < text.index(ANALYSIS_BEGIN) < text.index("## MNIST CNN, batch-1")
    assert text.endswith(EXISTING[EXISTING.index(APPENDED_BEGIN):])
    assert text.count(HTTP_EDGE_BEGIN) == 1 and text.count("## INT8 quantization") == 1
    assert "| Triton 2.51 + Python backend (PyTriton) | 3,000 | 2,700 / 3,000 |" in text
    again = carried_blocks(text)  # a second run carries the same blocks over
    assert again == carried_blocks(EXISTING)


def test_a_file_without_markers_keeps_its_http_edge_section_and_takes_the_analysis_file(tmp_path: Path) -> None:
    analysis = tmp_path / "benchmarks-analysis.md"
    analysis.write_text("### Why\n\n- from the file\n")
    old = EXISTING.replace(f"{APPENDED_BEGIN}\n\n", "").replace(ANALYSIS_BEGIN, "").replace(ANALYSIS_END, "")
    carried = carried_blocks(old, analysis)
    assert carried.analysis == f"{ANALYSIS_BEGIN}\n### Why\n\n- from the file\n{ANALYSIS_END}"
    assert carried.appended.startswith(f"{APPENDED_BEGIN}\n\n{HTTP_EDGE_BEGIN}")
    assert carried.appended.endswith("int8 words\n")
    empty = carried_blocks("")
    assert empty.analysis == f"{ANALYSIS_BEGIN}\n{PLACEHOLDER}\n{ANALYSIS_END}" and empty.appended == ""


METRICS_BEFORE = """# TYPE onnx_serve_requests_total counter
onnx_serve_requests_total{api="infer",code="OK",model="mnist-cnn",version="1"} 10.0
onnx_serve_requests_total{api="infer",code="OK",model="other",version="1"} 99.0
onnx_serve_inferences_total{model="mnist-cnn",version="1"} 10.0
onnx_serve_batch_size_count{model="mnist-cnn",version="1"} 10.0
"""
METRICS_AFTER = """onnx_serve_requests_total{api="infer",code="OK",model="mnist-cnn",version="1"} 6010.0
onnx_serve_requests_total{api="infer",code="CANCELLED",model="mnist-cnn",version="1"} 100.0
onnx_serve_requests_total{api="infer",code="RESOURCE_EXHAUSTED",model="mnist-cnn",version="1"} 3.0
onnx_serve_inferences_total{model="mnist-cnn",version="1"} 6010.0
onnx_serve_batch_size_count{model="mnist-cnn",version="1"} 510.0
"""
TRITON_AFTER = """nv_inference_request_success{model="mnist-cnn",version="1"} 4000
nv_inference_request_failure{model="mnist-cnn",version="1"} 0
nv_inference_count{model="mnist-cnn",version="1"} 4000
nv_inference_exec_count{model="mnist-cnn",version="1"} 100
"""


def h2load_point(requests: int, succeeded: int, **extra: Any) -> dict[str, Any]:
    point = level(128, requests / 6.0, point="4x32", **extra)
    point.update(requests=requests, duration_s=6.0, h2load={"requests": {"succeeded": succeeded}})
    return point


def test_an_h2load_point_against_workers_is_recounted_from_the_aggregated_metrics() -> None:
    before, after = onnx_serve_totals(METRICS_BEFORE, "mnist-cnn"), onnx_serve_totals(METRICS_AFTER, "mnist-cnn")
    assert before.codes == Counter({"OK": 10}) and (before.inferences, before.executions) == (10, 10)
    point = h2load_point(2400, 4803, server_us=1000.0, batch=4.0)
    point.update(error_count=2400, errors={"GRPC_NOT_OK": 2400})
    document = {"levels": [point], "items_per_request": 1, "notes": ["4x32: errors {'GRPC_NOT_OK': 2400}"]}
    recount(document, before, after, "onnx-serve's /metrics")
    assert point["requests"] == 4800 and point["items_per_s"] == 800.0
    assert point["errors"] == {"SERVER_RESOURCE_EXHAUSTED": 3} and point["error_count"] == 3  # CANCELLED: abandoned
    assert point["server_cpu_us_per_request"] == 500.0  # the same CPU over twice the requests
    assert point["server"]["avg_batch_size"] == 12.0  # every worker's: 6,000 samples in 500 batches
    assert point["server"]["avg_queue_ms"] == 0.1  # the rest stays one worker's, and says so
    assert "one worker's ModelStatistics" in point["server"]["scope"]
    assert document["notes"] == ["counted with onnx-serve's /metrics (benchmarks/recount.py)"]


def test_triton_gets_its_mean_batch_from_its_metrics() -> None:
    point = h2load_point(4000, 4000)
    document = {"levels": [point], "notes": ["the server has no ModelStatistics (UNAVAILABLE: restricted)"]}
    recount(document, triton_totals("", "mnist-cnn"), triton_totals(TRITON_AFTER, "mnist-cnn"), "triton's /metrics")
    assert point["requests"] == 4000 and point["error_count"] == 0
    assert point["server"]["avg_batch_size"] == 40.0
    assert document["notes"] == ["counted with triton's /metrics (benchmarks/recount.py)"]
