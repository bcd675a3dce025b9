"""Regenerate docs/benchmarks.md: onnx-serve against raw ONNX Runtime and the peer servers, one client, one run.

    python -m benchmarks.run            # the full run (~12 min on 2 cores), writes docs/benchmarks.md
    python -m benchmarks.run --quick    # a short smoke run of every step (~4 min)
    python -m benchmarks.run --skip-peers --skip-resnet

Every server is started here, on 127.0.0.1 with free ports, measured by the same `onnx-serve bench` client
(a subprocess, so the client is one process like a user's) and stopped before the next starts. Peers come
from ../shared/peers (their start.sh create venvs under /tmp the first time: slow once). Models: the bundled
models/mnist-cnn (or, while it is not built yet, an MNIST-shaped CNN with random weights) and the
ResNet-18-shaped CNN of `python -m training.resnet18 --out bench-models` (built here when missing and torch
is installed). Raw JSON lands in bench-results/, the report in docs/benchmarks.md and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from onnx_serve.bench.launch import ServerProcess, launch, start_server, wait_for_model

from benchmarks import profiling
from benchmarks.doc import machine_info, render
from benchmarks.models import ROOT, mnist_model_dir, peer_models, repository_variant, resnet_model_dir

PEERS = Path(os.environ.get("ONNX_SERVE_PEERS", ROOT.parent / "shared" / "peers"))
MNIST_LEVELS = (1, 8, 32, 64)


@dataclass
class Server:
    """A server of the run, and how long it took from launch until ModelMetadata answered for the model."""

    name: str
    running: ServerProcess
    startup_s: float

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # it is killed by then
            self.running.stop(timeout=20)


@dataclass
class Runs:
    """Everything measured, keyed by run name; rendered by benchmarks.doc."""

    settings: dict[str, Any]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(name: str, running: ServerProcess, model: str, log: Path, timeout: float) -> Server:
    """Waits until ModelMetadata answers for `model`, the first moment a client could use it: start-up time is
    measured that way for every server alike."""
    try:
        wait_for_model(running.url, model, timeout=timeout, process=running.process)
    except Exception as exc:
        running.process.kill()
        raise RuntimeError(f"{name}: {exc}; see {log}") from None
    return Server(name, running, time.monotonic() - running.started)


def start_onnx_serve(name: str, repository: Path, model: str, logs: Path, workers: int = 1) -> Server:
    log = logs / f"{name}.log"
    try:
        running = start_server(repository, "--workers", str(workers), "--execution-providers", "cpu",
                               "--grace-period", "1", cwd=ROOT, log_path=log, new_session=True)
    except AssertionError as exc:  # its message holds the whole log, which is in the file already
        raise RuntimeError(f"{name}: {str(exc).splitlines()[0]}; see {log}") from None
    return ready(name, running, model, log, timeout=60)


def start_peer(kind: str, name: str, models_dir: Path, model: str, logs: Path) -> Server:
    port = free_port()
    script = PEERS / kind / "start.sh"
    extra = {"mlserver": ["--workers", "0", "--batching", "off", "--debug", "false"],
             "kserve": ["--enable_latency_logging", "false"], "null": []}[kind]
    env = {"PEER_MODELS_DIR": str(models_dir), "KSERVE_LOGLEVEL": "WARNING",
           "BENCH_RUN_DIR": str(models_dir.parent / f"mlserver-run-{port}")}
    log = logs / f"{name}.log"
    running = launch([str(script), "--port", str(port), "--models", model, *extra], grpc_port=port, env=env,
                     cwd=models_dir.parent, log_path=log, new_session=True)
    return ready(name, running, model, log, timeout=600)


def run_bench(results: Path, key: str, server: Server, model: str, levels: Sequence[int], timing: argparse.Namespace,
              extra: Sequence[str] = ()) -> dict[str, Any]:
    out = results / f"{key}.json"
    args = ["bench", "--url", server.running.url, "--model", model, "--concurrency", ",".join(map(str, levels)),
            "--duration", str(timing.duration), "--warmup", str(timing.warmup), "--window", str(timing.window),
            "--label", key, *extra]
    shown = "onnx-serve " + " ".join(a if a != server.running.url else "$URL" for a in args)
    shown += f" --json {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
    print(f"== {key}: {shown}", flush=True)
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", *args, "--json", str(out), "--server-pid",
                                str(server.running.pid), "--no-progress"], cwd=ROOT, text=True, capture_output=True)
    print(completed.stdout, end="", flush=True)
    if completed.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"bench {key} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    document = json.loads(out.read_text())
    document["command"] = shown
    document["server_name"] = server.name
    return document


def run_raw(results: Path, key: str, model_dir: Path, batch_sizes: Sequence[int], duration: float) -> dict[str, Any]:
    out = results / f"{key}.json"
    args = ["bench", "--raw", str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
            "--batch-sizes", ",".join(map(str, batch_sizes)), "--duration", str(duration), "--warmup", "0.5"]
    print(f"== {key}: onnx-serve {' '.join(args)}", flush=True)
    completed = subprocess.run([sys.executable, "-m", "onnx_serve", *args, "--json", str(out), "--no-progress"],
                               cwd=ROOT, text=True, capture_output=True, check=True)
    print(completed.stdout, flush=True)
    document = json.loads(out.read_text())
    document["command"] = "onnx-serve " + " ".join(args)
    return document


# ---------------------------------------------------------------------------------------------- the run

class Session:
    """Runs scenarios, recording each server's start-up time and peak RSS; a failing scenario is reported
    in the document and the run goes on."""

    def __init__(self, state: Runs, options: argparse.Namespace, results: Path, logs: Path) -> None:
        self.state, self.options, self.results, self.logs = state, options, results, logs

    def serve(self, server_key: str, start: Any, benches: Sequence[tuple[str, str, Sequence[int], Sequence[str]]],
              timing: argparse.Namespace | None = None) -> None:
        """benches: (run key, model, levels, extra bench args)."""
        try:
            server = start()
        except Exception as exc:
            self.state.skipped.append(f"{server_key}: could not start: {exc}")
            print(f"!! {self.state.skipped[-1]}", flush=True)
            return
        info = self.state.servers.setdefault(server_key, {"startup_s": round(server.startup_s, 2), "rss_mb": 0.0})
        info["startup_s"] = min(info["startup_s"], round(server.startup_s, 2))
        try:
            for key, model, levels, extra in benches:
                try:
                    document = run_bench(self.results, key, server, model, levels, timing or self.options, extra)
                except Exception as exc:
                    self.state.skipped.append(f"{key}: {exc}")
                    print(f"!! {self.state.skipped[-1]}", flush=True)
                    continue
                document["server_key"] = server_key
                self._keep_best(key, document)
                rss = [lv["server_rss_mb"] for lv in document["levels"] if lv["server_rss_mb"]]
                info["rss_mb"] = max([info["rss_mb"], *rss])
        finally:
            server.stop()


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


def measure_mnist(session: Session, work: Path) -> None:
    options, state, logs = session.options, session.state, session.logs
    source, bundled = mnist_model_dir(work)
    state.settings["mnist_source"] = str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    state.settings["mnist_bundled"] = bundled
    config = yaml.safe_load((source / "config.yaml").read_text()) if (source / "config.yaml").exists() else {}
    state.settings["mnist_batching"] = config.get("dynamic_batching") or {}
    model = "mnist-cnn"
    state.raw["mnist"] = run_raw(session.results, "raw-mnist", source, (1, 2, 4, 8, 16, 32, 64), options.raw_duration)
    on = repository_variant(source, work, "mnist-batching-on", model, batching=True)
    off = repository_variant(source, work, "mnist-batching-off", model, batching=False)
    levels = MNIST_LEVELS
    servers: list[tuple[str, Any, list[tuple[str, str, Sequence[int], Sequence[str]]]]] = [
        ("onnx-serve", lambda: start_onnx_serve("onnx-serve", on, model, logs), [
            ("onnx-serve", model, levels, []),
            ("onnx-serve-stream", model, levels, ["--api", "stream"]),
            ("client-proto-codec", model, (32,), ["--codec", "proto"]),
            ("client-2-channels", model, (32,), ["--channels", "2"]),
        ]),
        ("onnx-serve-batching-off", lambda: start_onnx_serve("onnx-serve-batching-off", off, model, logs),
         [("onnx-serve-batching-off", model, levels, [])]),
        ("onnx-serve-2-workers", lambda: start_onnx_serve("onnx-serve-2-workers", on, model, logs, 2),
         [("onnx-serve-2-workers", model, levels, ["--channels", "4"])]),
    ]
    if options.skip_peers:
        state.skipped.append("peers: --skip-peers")
    else:
        models = peer_models(work, {model: source})
        servers += [(kind, lambda kind=kind: start_peer(kind, kind, models, model, logs), [(kind, model, levels, [])])
                    for kind in ("null", "kserve", "mlserver")]
    for index in range(options.repeat):  # passes run the servers in rotated order
        for server_key, start, benches in servers[index % len(servers):] + servers[:index % len(servers)]:
            session.serve(server_key, start, benches)
    session.serve("onnx-serve", lambda: start_onnx_serve("onnx-serve", on, model, logs),
                  [("onnx-serve-classify", model, (1, 32), ["--api", "classify"])])
    if not options.skip_profile:
        profile_onnx_serve(session, on, model)


def profile_onnx_serve(session: Session, repository: Path, model: str, concurrency: int = 32, seconds: int = 5
                       ) -> None:
    """py-spy samples of the server and of the client while the client holds `concurrency` requests in flight."""
    if profiling.py_spy() is None:
        session.state.skipped.append("profile: py-spy is not installed (pip install py-spy)")
        return
    server = start_onnx_serve("onnx-serve-profiled", repository, model, session.logs)
    warmup = 2.0
    try:
        client = subprocess.Popen([sys.executable, "-m", "onnx_serve", "bench", "--url", server.running.url,
                                   "--model", model, "--concurrency", str(concurrency), "--warmup", str(warmup),
                                   "--duration", str(seconds + 3), "--no-progress"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL)
        time.sleep(warmup + 0.5)
        targets = {"server": server.running.pid, "client": client.pid}
        for name in targets:
            (session.results / f"profile-{name}.txt").unlink(missing_ok=True)
        recorders = [profiling.start_recording(pid, seconds, session.results / f"profile-{name}.txt")
                     for name, pid in targets.items()]
        for recorder in recorders:
            if recorder is not None:
                recorder.wait()
        client.wait()
    finally:
        server.stop()
    for name in targets:
        raw = session.results / f"profile-{name}.txt"
        if raw.exists():
            session.state.profiles[name] = {"concurrency": concurrency, "seconds": seconds,
                                            **profiling.summarize(raw)}
        else:
            session.state.skipped.append(f"profile of the {name}: py-spy recorded nothing (ptrace not permitted?)")


def measure_resnet(session: Session, work: Path) -> None:
    options, state, logs = session.options, session.state, session.logs
    source = resnet_model_dir()
    if source is None:
        state.skipped.append("resnet18: bench-models/resnet18 is missing and torch is not installed")
        return
    model = "resnet18"
    state.raw["resnet18"] = run_raw(session.results, "raw-resnet18", source, (1, 2, 4, 8, 16, 32, 64),
                                    options.raw_duration)
    timing = argparse.Namespace(duration=max(options.duration, options.resnet_duration), warmup=options.warmup,
                                window=max(options.window, options.resnet_duration / 5))
    on = repository_variant(source, work, "resnet18-batching-on", model, batching=True)
    session.serve("onnx-serve-resnet18", lambda: start_onnx_serve("onnx-serve-resnet18", on, model, logs),
                  [("onnx-serve-resnet18", model, (1, 8), [])], timing)
    if options.skip_peers:
        return
    models = peer_models(work, {model: source})
    for kind in ("kserve", "mlserver"):
        session.serve(f"{kind}-resnet18", lambda kind=kind: start_peer(kind, f"{kind}-resnet18", models, model, logs),
                      [(f"{kind}-resnet18", model, (1, 8), [])], timing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=1.5, help="stability window, seconds")
    parser.add_argument("--raw-duration", type=float, default=2.5, help="seconds per batch size for --raw")
    parser.add_argument("--resnet-duration", type=float, default=10.0, help="measured seconds per ResNet-18 level")
    parser.add_argument("--repeat", type=int, default=2,
                        help="passes over the MNIST servers; each level reports its best pass (noise only slows)")
    parser.add_argument("--quick", action="store_true", help="short durations: a smoke run of every step")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-profile", action="store_true", help="no py-spy profile of onnx-serve at c=32")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/onnx-serve-bench"),
                        help="scratch space: model repositories, peer model links, peer run dirs")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the report from the last run's bench-results/summary.json, measuring nothing")
    options = parser.parse_args(argv)
    chart = options.out.with_suffix(".png")
    if options.render_only:
        state = Runs(**json.loads((options.results / "summary.json").read_text()))
        options.out.write_text(render(state, chart, ROOT))
        print(f"wrote {options.out} and {chart} from {options.results / 'summary.json'}")
        return 0
    if options.quick:
        options.duration, options.warmup, options.window = 2.0, 0.5, 0.5
        options.raw_duration, options.resnet_duration, options.repeat = 0.5, 3.0, 1
    options.results.mkdir(parents=True, exist_ok=True)
    logs = options.results / "logs"
    logs.mkdir(exist_ok=True)
    options.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    state = Runs(settings={"duration_s": options.duration, "warmup_s": options.warmup, "window_s": options.window,
                           "raw_duration_s": options.raw_duration, "resnet_duration_s": options.resnet_duration,
                           "repeat": options.repeat, "quick": options.quick,
                           "command": shlex.join(["python", "-m", "benchmarks.run",
                                                  *(sys.argv[1:] if argv is None else argv)])})
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
    options.out.write_text(render(state, chart, ROOT))
    print(f"wrote {options.out} and {chart} in {state.settings['elapsed_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
