"""Regenerate docs/benchmarks.md: onnx-serve against raw ONNX Runtime and the peer servers, both bench drivers,
in one run (issue #15's targets).

    python scripts/run_benchmarks.py            # the full run (~13-15 min on 2 cores), writes docs/benchmarks.md
    python scripts/run_benchmarks.py --quick    # a short smoke run of every step (~4 min)
    python -m benchmarks.run --skip-peers --skip-resnet     # the same module
    python -m benchmarks.run --render-only      # rewrite the report from bench-results/summary.json

Every server is started here, on 127.0.0.1 with free ports, and stopped before the next starts. Two clients
measure it: nghttp2's C client through `onnx-serve bench --driver h2load --points 4x32` (the client leaves the
CPU to the server), and the Python client `onnx-serve bench` (a subprocess, so the client is one process like a
user's) at concurrency 1, 8 and 32. The MNIST servers are measured in `--repeat` passes, servers in rotated
order, each level keeping its best pass. Peers come from ../shared/peers: the do-nothing V2 server, NVIDIA
Triton 2.51 through PyTriton (its Python backend), MLServer with batching off and on, and KServe with
`--with-kserve` (issue #15 does not need it). Their start.sh create venvs under /tmp the first time (pip,
minutes, once). Models: the bundled models/mnist-cnn (or, while it is not built yet, an MNIST-shaped CNN with
random weights) and the ResNet-18-shaped CNN of `python -m training.resnet18 --out bench-models` (built here
when missing and torch is installed). Raw JSON lands in bench-results/, the report in docs/benchmarks.md and
docs/benchmarks.png.

What is not measured here is carried over from the existing docs/benchmarks.md (benchmarks/carry.py): the
hand-written analysis between `<!-- analysis:begin -->` and `<!-- analysis:end -->`, and everything from
`<!-- appended:begin -->` to the end of the file (the "HTTP edge" section of benchmarks/http.py --write-doc,
with its own markers, the "INT8" and "tune" sections of benchmarks/int8*.py and `onnx-serve tune`), verbatim.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.carry import carried_blocks
from benchmarks.doc import machine_info, render
from benchmarks.models import ROOT
from benchmarks.recount import TOTALS, recount
from benchmarks.servers import Server

H2LOAD_POINT = "4x32"
# `onnx-serve bench --driver h2load`'s refusal when its check's request was not counted where it reads counters
MISSED_CHECK = "the server counted no successful request"
CHECK_ATTEMPTS = 6  # with 2 workers each attempt passes with odds 1/2: 6 fail together 1.6% of the time


class Bench(NamedTuple):
    """One `onnx-serve bench` run against a started server: its key in the results, the model, the load
    arguments (`--concurrency ...` or `--driver h2load --points ...`) and, when not the run's, its timing."""

    key: str
    model: str
    load: tuple[str, ...]
    timing: argparse.Namespace | None = None


def python_levels(levels: Sequence[int], *extra: str) -> tuple[str, ...]:
    return ("--concurrency", ",".join(map(str, levels)), *extra)


def _one_level(load: Sequence[str]) -> bool:
    """An h2load bench of one point, or a Python-client bench of one concurrency level."""
    if "h2load" in load:
        return "," not in load[load.index("--points") + 1]
    return "," not in load[load.index("--concurrency") + 1]


def h2load_points(points: str = H2LOAD_POINT) -> tuple[str, ...]:
    return ("--driver", "h2load", "--points", points)


@dataclass
class Runs:
    """Everything measured, keyed by run name; rendered by benchmarks.doc."""

    settings: dict[str, Any]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def run_bench(results: Path, bench: Bench, server: Server, timing: argparse.Namespace) -> dict[str, Any]:
    out = results / f"{bench.key}.json"
    args = ["bench", "--url", server.running.url, "--model", bench.model, *bench.load,
            "--duration", str(timing.duration), "--warmup", str(timing.warmup), "--window", str(timing.window),
            "--label", bench.key]
    shown = "onnx-serve " + " ".join(a if a != server.running.url else "$URL" for a in args)
    shown += f" --json {_shown(out)}"
    print(f"== {bench.key}: {shown}", flush=True)
    out.unlink(missing_ok=True)
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", *args, "--json", str(out), "--server-pid",
                                str(server.running.pid), "--no-progress"], cwd=ROOT, text=True, capture_output=True)
    print(completed.stdout, end="", flush=True)
    if completed.returncode not in (0, 1) or not out.exists():  # 1: a level had errors, which the report shows
        raise RuntimeError(f"bench {bench.key} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    document: dict[str, Any] = json.loads(out.read_text())
    document["command"] = shown
    document["server_name"] = server.name
    return document


def run_raw(results: Path, key: str, model_dir: Path, batch_sizes: Sequence[int], duration: float) -> dict[str, Any]:
    out = results / f"{key}.json"
    args = ["bench", "--raw", _shown(model_dir), "--batch-sizes", ",".join(map(str, batch_sizes)),
            "--duration", str(duration), "--warmup", "0.5"]
    print(f"== {key}: onnx-serve {' '.join(args)}", flush=True)
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", *args, "--json", str(out), "--no-progress"],
                               cwd=ROOT, text=True, capture_output=True, check=True)
    print(completed.stdout, flush=True)
    document: dict[str, Any] = json.loads(out.read_text())
    document["command"] = "onnx-serve " + " ".join(args)
    return document


class Session:
    """Runs scenarios, recording each server's start-up time and peak RSS; a failing scenario is reported
    in the document and the run goes on."""

    def __init__(self, state: Runs, options: argparse.Namespace, results: Path, logs: Path) -> None:
        self.state, self.options, self.results, self.logs = state, options, results, logs

    def serve(self, server_key: str, start: Callable[[], Server], benches: Sequence[Bench]) -> None:
        try:
            server = start()
        except Exception as exc:
            self.state.skipped.append(f"{server_key}: could not start: {exc}")
            print(f"!! {self.state.skipped[-1]}", flush=True)
            return
        info = self.state.servers.setdefault(server_key, {"startup_s": round(server.startup_s, 2), "rss_mb": 0.0})
        info["startup_s"] = min(info["startup_s"], round(server.startup_s, 2))
        try:
            for bench in benches:
                try:
                    document = self._bench(bench, server)
                except Exception as exc:
                    self.state.skipped.append(f"{bench.key}: {exc}")
                    print(f"!! {self.state.skipped[-1]}", flush=True)
                    continue
                document["server_key"] = server_key
                self._keep_best(bench.key, document)
                rss = [lv["server_rss_mb"] for lv in document["levels"] if lv["server_rss_mb"]]
                info["rss_mb"] = max([info["rss_mb"], *rss])
        finally:
            server.stop()

    def _bench(self, bench: Bench, server: Server) -> dict[str, Any]:
        """One bench; where the server's ModelStatistics cannot vouch for an h2load point (or give a mean batch),
        it is recounted from the server's /metrics (benchmarks/recount.py)."""
        timing = bench.timing or self.options
        if server.counters is None or not _one_level(bench.load):
            return run_bench(self.results, bench, server, timing)
        kind = server.counters[0]
        totals = TOTALS[kind]
        for attempt in range(1, CHECK_ATTEMPTS + 1):
            before = totals(server.scrape(), bench.model)
            try:
                document = run_bench(self.results, bench, server, timing)
                break
            except RuntimeError as exc:
                # The h2load driver's check sends one request on a connection of its own, and may reach the
                # worker whose ModelStatistics it does not read: it refuses the body though the answer was OK.
                if server.workers == 1 or MISSED_CHECK not in str(exc) or attempt == CHECK_ATTEMPTS:
                    raise
                print(f"   (the check reached the other worker; attempt {attempt + 1} of {CHECK_ATTEMPTS})")
        recount(document, before, totals(server.scrape(), bench.model), f"{kind}'s /metrics")
        (self.results / f"{bench.key}.json").write_text(json.dumps(document, indent=2) + "\n")
        return document

    def _keep_best(self, key: str, document: dict[str, Any]) -> None:
        """With --repeat, each level keeps its best pass (other load on the machine only ever slows a level
        down); every pass's items/s stays in the JSON."""
        for level in document["levels"]:
            level["passes_items_per_s"] = [level["items_per_s"]]
        earlier = self.state.runs.get(key)
        if earlier is None:
            self.state.runs[key] = document
            return
        by_concurrency = {lv["concurrency"]: lv for lv in earlier["levels"]}
        merged = []
        for level in document["levels"]:
            previous = by_concurrency.get(level["concurrency"])
            if previous is None:
                merged.append(level)
                continue
            passes = [*previous["passes_items_per_s"], level["items_per_s"]]
            best = level if level["items_per_s"] > previous["items_per_s"] else previous
            best["passes_items_per_s"] = passes
            merged.append(best)
        earlier["levels"] = merged


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per Python-client level")
    parser.add_argument("--h2load-duration", type=float, default=6.0, help="measured seconds per h2load point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=1.5, help="stability window, seconds")
    parser.add_argument("--raw-duration", type=float, default=2.5, help="seconds per batch size for --raw")
    parser.add_argument("--resnet-duration", type=float, default=10.0, help="measured seconds per ResNet-18 level")
    parser.add_argument("--repeat", type=int, default=2,
                        help="passes over the MNIST servers; each level reports its best pass (noise only slows)")
    parser.add_argument("--quick", action="store_true", help="short durations, one pass: a smoke run of every step")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--with-kserve", action="store_true", help="also KServe (MNIST, Python client)")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-profile", action="store_true", help="no py-spy profile of onnx-serve at c=32")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnx-serve-bench"),
                        help="scratch space: model repositories, peer model links, peer run dirs")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the report from the last run's bench-results/summary.json, measuring nothing")
    options = parser.parse_args(argv)
    if options.quick:
        options.duration, options.h2load_duration, options.warmup, options.window = 2.0, 2.0, 0.5, 0.5
        options.raw_duration, options.resnet_duration, options.repeat = 0.5, 3.0, 1
    return options


def write_report(state: Runs, out: Path) -> None:
    """Renders the report; the hand-written analysis and the appended sections come from the file it replaces."""
    carried = carried_blocks(out.read_text() if out.exists() else "", ROOT / "docs" / "benchmarks-analysis.md")
    out.write_text(render(state, out.with_suffix(".png"), ROOT, carried))


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.scenarios import measure_mnist, measure_resnet

    options = parse_options(argv)
    if options.render_only:
        state = Runs(**json.loads((options.results / "summary.json").read_text()))
        write_report(state, options.out)
        print(f"wrote {options.out} from {options.results / 'summary.json'}")
        return 0
    options.results.mkdir(parents=True, exist_ok=True)
    logs = options.results / "logs"
    logs.mkdir(exist_ok=True)
    options.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    command = os.environ.get("BENCHMARKS_COMMAND", "python -m benchmarks.run")  # scripts/run_benchmarks.py sets it
    state = Runs(settings={"duration_s": options.duration, "h2load_duration_s": options.h2load_duration,
                           "warmup_s": options.warmup, "window_s": options.window, "h2load_point": H2LOAD_POINT,
                           "raw_duration_s": options.raw_duration, "resnet_duration_s": options.resnet_duration,
                           "repeat": options.repeat, "quick": options.quick, "results": _shown(options.results),
                           "command": shlex.join([*shlex.split(command), *(sys.argv[1:] if argv is None else argv)])})
    session = Session(state, options, options.results, logs)
    measure_mnist(session, options.work)
    if options.skip_resnet:
        state.skipped.append("resnet18: --skip-resnet")
    else:
        measure_resnet(session, options.work)
    state.settings["elapsed_s"] = round(time.monotonic() - started)
    state.settings["machine"] = machine_info()
    state.settings["machine"]["load_average"] = [round(load_at_start, 2), round(os.getloadavg()[0], 2)]
    (options.results / "summary.json").write_text(json.dumps(state.__dict__, indent=2, default=str) + "\n")
    write_report(state, options.out)
    print(f"wrote {options.out} in {state.settings['elapsed_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
