"""Renders docs/benchmarks.md from the runs of benchmarks.run: method, machine, tables, ratios,
targets, chart, and the command behind every number."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

MNIST_SERIES = (("onnx-serve", "onnx-serve (batching on, 1 worker)"),
                ("onnx-serve-batching-off", "onnx-serve (batching off)"),
                ("onnx-serve-2-workers", "onnx-serve (2 workers)"),
                ("onnx-serve-stream", "onnx-serve ModelStreamInfer"),
                ("onnx-serve-classify", "onnx-serve Classify API (PNG in)"),
                ("null", "do-nothing V2 server"),
                ("kserve", "KServe"),
                ("mlserver", "MLServer (in-process, no batching)"))
PEER_VENVS = {"mlserver": "/tmp/bench-venv-mlserver", "kserve": "/tmp/bench-venv-kserve"}


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    import google.protobuf
    import grpc
    import numpy
    import onnxruntime
    from onnx_serve import __version__
    from onnx_serve.core.settings import cpu_quota

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")), 0)
    root = Path(__file__).resolve().parent.parent
    revision = _run(["git", "rev-parse", "--short", "HEAD"], root)
    if _run(["git", "status", "--porcelain", "--untracked-files=no"], root):
        revision += " (with uncommitted changes)"
    peers = {}
    for name, venv in PEER_VENVS.items():
        version = _run([f"{venv}/bin/python", "-c", f"import importlib.metadata as m; print(m.version('{name}'))"])
        peers[name] = version or "not installed"
    return {
        "nproc": os.cpu_count(), "cpu_quota": cpu_quota(), "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 2**20, 1), "kernel": platform.release(), "python": platform.python_version(),
        "onnx_serve": f"{__version__} {revision}".strip(), "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__, "protobuf": google.protobuf.__version__, "numpy": numpy.__version__,
        "peers": peers,
    }


class Doc:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|")
        self.add(*("| " + " | ".join(row) + " |" for row in rows), "")

    def level(self, key: str, concurrency: int) -> dict[str, Any] | None:
        run = self.state.runs.get(key)
        return next((lv for lv in run["levels"] if lv["concurrency"] == concurrency), None) if run else None

    def rate(self, key: str, concurrency: int) -> float | None:
        level = self.level(key, concurrency)
        return level["items_per_s"] if level else None


def _batching(state: Any) -> dict[str, Any]:
    return state.settings.get("mnist_batching") or {}


def _flow(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in mapping.items()) + "}"


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cell(doc: Doc, key: str, concurrency: int, latency: str = "") -> str:
    level = doc.level(key, concurrency)
    if not level:
        return "-"
    text = _n(level["items_per_s"])
    if latency:
        text += f" ({level['latency_ms'][latency]:.2f})"
    if level["error_count"]:
        text += f" **{level['error_count']} errors**"
    return text + ("" if level["stable"] else " ~")


def _targets(doc: Doc) -> list[list[str]]:
    rows: list[list[str]] = []

    def target(name: str, measured: str, met: bool | None) -> None:
        rows.append([name, measured, "-" if met is None else ("yes" if met else "**no**")])

    for c in (32, 64):
        ours = doc.rate("onnx-serve", c)
        for peer, label, want in (("mlserver", "MLServer", 2.5), ("kserve", "KServe", 2.0), ("null", "null", 0.6)):
            r = _ratio(ours, doc.rate(peer, c))
            target(f"MNIST c={c}: onnx-serve >= {want} x {label}",
                   f"{_n(ours)} / {_n(doc.rate(peer, c))} = {_n(r, 2)} x", None if r is None else r >= want)
    raw = doc.state.raw.get("resnet18")
    served = doc.rate("onnx-serve-resnet18", 8)
    r = _ratio(served, raw["best"]["items_per_s"] if raw else None)
    target("ResNet-18 c=8: served >= 0.92 x raw ONNX Runtime at its best batch",
           f"{_n(served, 1)} / {_n(raw['best']['items_per_s'] if raw else None, 1)} = {_n(r, 2)} x",
           None if r is None else r >= 0.92)
    ours1, null1 = doc.level("onnx-serve", 1), doc.level("null", 1)
    if ours1 and null1:
        a, b = ours1["latency_ms"]["p50"], null1["latency_ms"]["p50"]
        target("c=1: p50 <= null p50 + 0.2 ms", f"{a:.3f} ms vs {b:.3f} + 0.2 ms", a <= b + 0.2)
    r = _ratio(doc.rate("onnx-serve-stream", 32), doc.rate("onnx-serve", 32))
    target("c=32: ModelStreamInfer >= 1.5 x unary", f"{_n(r, 2)} x", None if r is None else r >= 1.5)
    ratios = [(c, _ratio(doc.rate("onnx-serve", c), doc.rate("onnx-serve-batching-off", c))) for c in (8, 32, 64)]
    known = [(c, r) for c, r in ratios if r is not None]
    target("c>=8: batching on >= batching off", ", ".join(f"c={c}: {r:.2f} x" for c, r in known) or "-",
           all(r >= 0.97 for _, r in known) if known else None)  # 3%: within run-to-run noise
    on1, off1 = doc.level("onnx-serve", 1), doc.level("onnx-serve-batching-off", 1)
    if on1 and off1:
        added = on1["latency_ms"]["p50"] - off1["latency_ms"]["p50"]
        delay_ms = _batching(doc.state).get("max_queue_delay_microseconds", 0) / 1000
        target(f"c=1: batching adds <= the configured delay ({delay_ms:g} ms) to p50", f"{added:+.3f} ms",
               added <= max(delay_ms, 0.02))  # 20 us: below what one run can resolve
    server = doc.state.servers.get("onnx-serve")
    if server:
        target("start-up to ready <= 2 s", f"{server['startup_s']:.2f} s", server["startup_s"] <= 2.0)
        target("RSS <= 150 MB", f"{server['rss_mb']:.0f} MiB", server["rss_mb"] * 1.048576 <= 150)
    return rows


def render(state: Any, chart: Path, root: Path) -> str:
    doc = Doc(state)
    settings, machine = state.settings, state.settings["machine"]
    doc.add("# Benchmarks", "",
            f"Generated by `{settings['command']}` in {settings['elapsed_s']} s "
            "(raw JSON of every run in `bench-results/`). Numbers from one run on a shared machine: "
            "expect a few percent of noise between runs; levels marked ~ did not pass the stability rule.", "")
    doc.add("## Method", "",
            "- One client for every server: `onnx-serve bench` (Python, grpc.aio, one process, one channel unless "
            "stated), keeping exactly C requests in flight; every request is the same pre-serialized message "
            "(batch-1 MNIST `FP32[1, 1, 28, 28]` as `raw_input_contents`), answers are not parsed.",
            f"- Per level: {settings['warmup_s']:g} s warm-up, then at least {settings['duration_s']:g} s measured in "
            f"{settings['window_s']:g} s windows; a level is stable when the last three windows' throughputs are "
            "within 10% of their mean (perf_analyzer's rule), else up to three windows are added.",
            "- Client and server share the machine's CPUs (client CPU is reported per level: 100% = one core).",
            f"- The MNIST servers are measured in {settings.get('repeat', 1)} pass(es), servers in rotated order; "
            "each level reports its best pass (other load on a shared machine only ever slows a level down; every "
            "pass's items/s is in the JSON).",
            "- Servers run one at a time on 127.0.0.1 and are stopped between configurations. onnx-serve: "
            "`onnx-serve serve --execution-providers cpu` with the model's config.yaml (batching on: "
            f"`dynamic_batching: {_flow(_batching(state))}`) or the same with `dynamic_batching: false`.",
            "- Peers from `../shared/peers`: the do-nothing grpc.aio V2 server (no model: the ceiling of a Python "
            "gRPC stack), KServe's Python model server (`--enable_latency_logging false`, "
            "`KSERVE_LOGLEVEL=WARNING`), MLServer (`--workers 0 --batching off --debug false`, its fastest "
            "setting here). Both peers run ONNX Runtime with its default (spinning) CPU session.",
            "- Raw ONNX Runtime: `onnx-serve bench --raw`, the server's session settings (intra-op threads sized "
            "to the CPU quota, spinning off), one session, sequential runs.",
            f"- MNIST model: `{settings.get('mnist_source', '?')}`"
            + ("" if settings.get("mnist_bundled", True) else " (a stand-in with random weights: "
               "models/mnist-cnn was not built yet; same architecture as the peers' README)") + ".", "")
    doc.add("## Machine", "")
    doc.table(["", ""], [
        ["CPU", f"{machine['cpu_model']}, nproc {machine['nproc']}, CPU quota {machine['cpu_quota']:g}"],
        ["memory", f"{machine['memory_gib']} GiB"], ["kernel", machine["kernel"]],
        ["onnx-serve", machine["onnx_serve"]],
        ["versions", f"Python {machine['python']}, onnxruntime {machine['onnxruntime']}, grpcio {machine['grpcio']}, "
                     f"protobuf {machine['protobuf']}, numpy {machine['numpy']}"],
        ["peers", ", ".join(f"{k} {v}" for k, v in machine["peers"].items())],
        *([["load average (1 min)", "at start {}, at end {} (other work on the machine lowers every figure; "
            "compare the do-nothing server with its README numbers)".format(*machine["load_average"])]]
          if machine.get("load_average") else [])])
    doc.add("## Targets (issue #4)", "")
    doc.table(["target", "measured", "met"], _targets(doc))
    analysis = root / "docs" / "benchmarks-analysis.md"
    if analysis.exists():  # hand-written: why a missed target is missed, with the evidence to look at
        doc.add("", analysis.read_text().rstrip(), "")
    _mnist_sections(doc, chart, root)
    _resnet_section(doc)
    _details(doc)
    return "\n".join(doc.lines).rstrip() + "\n"


def _mnist_sections(doc: Doc, chart: Path, root: Path) -> None:
    state = doc.state
    doc.add("## MNIST CNN, batch-1 requests", "",
            "items/s per concurrency; (p50 ms) at c=1, (p99 ms) at c=32 and c=64; ~ = not stable.", "")
    rows = []
    for key, label in MNIST_SERIES:
        if key not in state.runs:
            continue
        server = state.servers.get(state.runs[key].get("server_key", key), {})
        rows.append([label, _cell(doc, key, 1, "p50"), _cell(doc, key, 8), _cell(doc, key, 32, "p99"),
                     _cell(doc, key, 64, "p99"), _n(server.get("startup_s"), 2), _n(server.get("rss_mb"))])
    raw = state.raw.get("mnist")
    if raw:
        one = next(r for r in raw["results"] if r["batch_size"] == 1)
        rows.append(["raw ONNX Runtime, batch 1 (no server)", f"{_n(one['items_per_s'])} "
                     f"({one['latency_ms']['p50']:.2f})", "", "", "", "", ""])
    doc.table(["server", "c=1", "c=8", "c=32", "c=64", "start-up s", "RSS MiB"], rows)
    try:
        from onnx_serve.bench.report import plot_series

        series = [(label, state.runs[key]["levels"]) for key, label in MNIST_SERIES
                  if key in state.runs and key != "onnx-serve-classify"]  # V2 tensors only: same work per item
        plot_series(chart, series, "MNIST CNN, batch-1 requests: throughput vs p99 latency")
        doc.add(f"![throughput vs p99 latency]({chart.name})", "")
    except ImportError:
        doc.add("(no chart: matplotlib is not installed; `pip install 'onnx-serve[plot]'`)", "")
    doc.add("### Ratios", "")
    comparisons: list[tuple[str, Callable[[int], float | None]]] = [
        ("onnx-serve / MLServer", lambda c: _ratio(doc.rate("onnx-serve", c), doc.rate("mlserver", c))),
        ("onnx-serve / KServe", lambda c: _ratio(doc.rate("onnx-serve", c), doc.rate("kserve", c))),
        ("onnx-serve / null server", lambda c: _ratio(doc.rate("onnx-serve", c), doc.rate("null", c))),
        ("stream / unary", lambda c: _ratio(doc.rate("onnx-serve-stream", c), doc.rate("onnx-serve", c))),
        ("batching on / off", lambda c: _ratio(doc.rate("onnx-serve", c), doc.rate("onnx-serve-batching-off", c))),
        ("2 workers / 1", lambda c: _ratio(doc.rate("onnx-serve-2-workers", c), doc.rate("onnx-serve", c))),
        ("served / raw ORT batch 1", lambda c: _ratio(doc.rate("onnx-serve", c), raw["results"][0]["items_per_s"]
                                                      if raw else None)),
    ]
    doc.table(["", *(f"c={c}" for c in (1, 8, 32, 64))],
              [[name, *(_n(fn(c), 2) for c in (1, 8, 32, 64))] for name, fn in comparisons])
    cpu_rows = []
    for key, label in MNIST_SERIES:
        level = doc.level(key, 32)
        if level and level.get("server_cpu_us_per_request") is not None:
            cpu_rows.append([label, _n(level["items_per_s"]), _n(level["server_cpu_us_per_request"]),
                             f"{level['server_cpu']:.0%}", _n(level["client_cpu_us_per_request"]),
                             f"{level['client_cpu']:.0%}"])
    if cpu_rows:
        doc.add("### CPU per request at c=32", "",
                "CPU seconds (user + system, whole process tree) per answered request; steadier than throughput on "
                "a shared machine. The do-nothing server's figure is the gRPC + Python floor; onnx-serve's extra is "
                "the model's compute plus our request path.", "")
        doc.table(["server", "req/s", "server us/req", "server CPU", "client us/req", "client CPU"], cpu_rows)
    run = state.runs.get("onnx-serve")
    if run:
        doc.add("### Where the time goes (onnx-serve, batching on)", "",
                "Server side from ModelStatistics deltas (per request; every request of a batch is charged the "
                "batch's compute), CPU from /proc (100% = one core; server = its process tree).", "")
        rows = []
        for lv in run["levels"]:
            s = lv["server"] or {}
            rows.append([str(lv["concurrency"]), _n(s.get("avg_queue_ms"), 3), _n(s.get("avg_compute_input_ms"), 3),
                         _n(s.get("avg_compute_infer_ms"), 3), _n(s.get("avg_compute_output_ms"), 3),
                         _n(s.get("avg_batch_size"), 2), f"{lv['client_cpu']:.0%}",
                         "-" if lv["server_cpu"] is None else f"{lv['server_cpu']:.0%}"])
        doc.table(["c", "queue ms", "input ms", "infer ms", "output ms", "avg batch", "client CPU", "server CPU"],
                  rows)
    client_rows = []
    for key, label in (("onnx-serve", "pre-serialized bytes, 1 channel (default)"),
                       ("client-proto-codec", "serialize + parse messages each call (`--codec proto`)"),
                       ("client-2-channels", "pre-serialized bytes, 2 channels (`--channels 2`)")):
        level = doc.level(key, 32)
        if level:
            client_rows.append([label, _n(level["items_per_s"]), f"{level['latency_ms']['p99']:.2f}",
                                f"{level['client_cpu']:.0%}"])
    if client_rows:
        doc.add("### The client itself (onnx-serve, c=32)", "")
        doc.table(["client variant", "req/s", "p99 ms", "client CPU"], client_rows)


def _resnet_section(doc: Doc) -> None:
    state = doc.state
    raw = state.raw.get("resnet18")
    if not raw:
        return
    doc.add("## ResNet-18-shaped CNN, 224x224", "")
    best = raw["best"]["items_per_s"]
    rows = [[f"raw ONNX Runtime, batch {r['batch_size']}", _n(r["items_per_s"], 1), "", "",
             f"{r['latency_ms']['p50']:.1f}"] for r in raw["results"]]
    for key, label in (("onnx-serve-resnet18", "onnx-serve (batching on)"), ("kserve-resnet18", "KServe"),
                       ("mlserver-resnet18", "MLServer")):
        for c in (1, 8):
            level = doc.level(key, c)
            if level:
                rows.append([f"{label}, c={c}", _n(level["items_per_s"], 1), _n(level["items_per_s"] / best, 2),
                             _n((level["server"] or {}).get("avg_batch_size"), 2),
                             f"{level['latency_ms']['p50']:.1f}" + ("" if level["stable"] else " ~")])
    doc.table(["configuration", "images/s", "/ raw best", "avg batch", "p50 ms"], rows)


def _details(doc: Doc) -> None:
    state = doc.state
    classify = state.runs.get("onnx-serve-classify")
    if classify:
        doc.add("## Classify API", "", f"{classify['request']}; decode + resize + normalize on the server.", "")
        doc.table(["c", "images/s", "p50 ms", "p99 ms"],
                  [[str(lv["concurrency"]), _n(lv["items_per_s"]), f"{lv['latency_ms']['p50']:.2f}",
                    f"{lv['latency_ms']['p99']:.2f}"] for lv in classify["levels"]])
    from onnx_serve.bench.report import notes_for

    cpus = state.settings["machine"]["cpu_quota"]  # notes again: with --repeat, the levels are each the best pass
    _profile_section(doc)
    notes = [f"- {key}: {note}" for key, run in state.runs.items() for note in notes_for(run["levels"], cpus)]
    notes += [f"- skipped: {item}" for item in state.skipped]
    if notes:
        doc.add("## Notes from this run", "", *notes, "")
    doc.add("## Commands", "", "Each server was started as described under Method; `$URL` is its address.", "",
            "```")
    doc.add(*(raw["command"] for raw in state.raw.values()))
    doc.add(*(run["command"] for run in state.runs.values()), "```", "")


def _profile_section(doc: Doc) -> None:
    profiles = getattr(doc.state, "profiles", None) or {}
    if not profiles:
        return
    first = next(iter(profiles.values()))
    doc.add(f"## Profile: onnx-serve at c={first['concurrency']} (py-spy)", "",
            f"`py-spy record --threads --nonblocking` on the server and on the bench client for {first['seconds']} s "
            "(raw stacks in `bench-results/profile-*.txt`). Shares are of the samples in which a thread was running "
            "Python or native code. Self time in `Handle._run (asyncio/events.py)` is native code called from an "
            "event-loop callback: grpc.aio's Cython core (HTTP/2, completion queue, message (de)serialization).", "")
    for name, profile in profiles.items():
        if not profile.get("samples"):
            continue
        threads = ", ".join(f"{thread} {share:.0f}%" for thread, share in profile["threads"].items())
        doc.add(f"**{name}** ({profile['samples']} samples): {threads}.", "")
        rows = []
        for index in range(max(len(profile["self"]), len(profile["inclusive"]))):
            own = profile["self"][index] if index < len(profile["self"]) else ("", None)
            incl = profile["inclusive"][index] if index < len(profile["inclusive"]) else ("", None)
            rows.append([f"`{own[0]}`" if own[0] else "", _n(own[1], 1), f"`{incl[0]}`" if incl[0] else "",
                         _n(incl[1], 1)])
        doc.table(["event-loop thread: self", "%", "inclusive (beyond the loop itself)", "%"], rows)
