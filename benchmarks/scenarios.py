"""What benchmarks.run measures: the MNIST servers with both drivers (rotated passes), the extras measured once
(Classify, client variants, a py-spy profile) and ResNet-18 (raw ONNX Runtime, onnx-serve, the peers).

Run keys: `h2load-<server>` for the C client at 4x32, `<server>` for the Python client at c=1/8/32,
`<server>-resnet18` for ResNet-18; see benchmarks.doc for how each is shown."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks import profiling
from benchmarks.models import ROOT, mnist_model_dir, peer_models, repository_variant, resnet_model_dir
from benchmarks.run import Bench, Session, h2load_points, python_levels
from benchmarks.servers import Server, start_onnx_serve, start_peer

MNIST_LEVELS = (1, 8, 32)
RAW_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
ServerPlan = tuple[str, Callable[[], Server], list[Bench]]


def measure_mnist(session: Session, work: Path) -> None:
    options, state, logs = session.options, session.state, session.logs
    source, bundled = mnist_model_dir(work)
    state.settings["mnist_source"] = str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    state.settings["mnist_bundled"] = bundled
    config = yaml.safe_load((source / "config.yaml").read_text()) if (source / "config.yaml").exists() else {}
    state.settings["mnist_batching"] = config.get("dynamic_batching") or {}
    model = "mnist-cnn"
    state.raw["mnist"] = run_raw_step(session, "raw-mnist", source)
    on = repository_variant(source, work, "mnist-batching-on", model, batching=True)
    off = repository_variant(source, work, "mnist-batching-off", model, batching=False)
    h2load_timing = argparse.Namespace(duration=options.h2load_duration, warmup=options.warmup,
                                       window=options.window)

    def c_client(key: str) -> Bench:
        return Bench(f"h2load-{key}", model, h2load_points(), h2load_timing)

    def ours(key: str, workers: int = 1, repository: Path = on) -> Callable[[], Server]:
        return lambda: start_onnx_serve(key, repository, model, logs, workers)

    servers: list[ServerPlan] = [
        ("onnx-serve", ours("onnx-serve"), [
            c_client("onnx-serve"),
            Bench("onnx-serve", model, python_levels(MNIST_LEVELS)),
            Bench("onnx-serve-stream", model, python_levels((32,), "--api", "stream")),
        ]),
        ("onnx-serve-2-workers", ours("onnx-serve-2-workers", 2), [
            c_client("onnx-serve-2-workers"),
            # 4 channels: one HTTP/2 connection would reach one worker only (SO_REUSEPORT balances connections)
            Bench("onnx-serve-2-workers", model, python_levels((8, 32), "--channels", "4")),
        ]),
        ("onnx-serve-batching-off", ours("onnx-serve-batching-off", repository=off),
         [Bench("onnx-serve-batching-off", model, python_levels((1, 32)))]),
    ]
    if options.skip_peers:
        state.skipped.append("peers: --skip-peers")
    else:
        models = peer_models(work, {model: source})

        def peer(kind: str) -> Callable[[], Server]:
            return lambda: start_peer(kind, kind, models, model, logs)

        servers += [
            ("null", peer("null"), [c_client("null"), Bench("null", model, python_levels(MNIST_LEVELS))]),
            ("pytriton", peer("pytriton"),
             [c_client("pytriton"), Bench("pytriton", model, python_levels(MNIST_LEVELS))]),
            ("mlserver", peer("mlserver"), [Bench("mlserver", model, python_levels(MNIST_LEVELS))]),
            ("mlserver-batching", peer("mlserver-batching"),
             [Bench("mlserver-batching", model, python_levels((8, 32)))]),
        ]
        if options.with_kserve:
            servers.append(("kserve", peer("kserve"), [Bench("kserve", model, python_levels(MNIST_LEVELS))]))
        else:
            state.skipped.append("kserve: not measured (issue #15 does not need it; --with-kserve measures it)")
    for index in range(options.repeat):  # passes run the servers in rotated order
        shift = index % len(servers)
        for server_key, start, benches in servers[shift:] + servers[:shift]:
            session.serve(server_key, start, benches)
    session.serve("onnx-serve", ours("onnx-serve"), [  # measured once: not targets
        Bench("onnx-serve-classify", model, python_levels((1, 32), "--api", "classify")),
        Bench("client-proto-codec", model, python_levels((32,), "--codec", "proto")),
        Bench("client-2-channels", model, python_levels((32,), "--channels", "2")),
    ])
    if not options.skip_profile:
        profile_onnx_serve(session, on, model)


def run_raw_step(session: Session, key: str, model_dir: Path) -> dict[str, Any]:
    from benchmarks.run import run_raw

    return run_raw(session.results, key, model_dir, RAW_BATCH_SIZES, session.options.raw_duration)


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
    state.raw["resnet18"] = run_raw_step(session, "raw-resnet18", source)
    timing = argparse.Namespace(duration=max(options.duration, options.resnet_duration), warmup=options.warmup,
                                window=max(options.window, options.resnet_duration / 5))
    levels = python_levels((1, 8))
    on = repository_variant(source, work, "resnet18-batching-on", model, batching=True)
    session.serve("onnx-serve-resnet18", lambda: start_onnx_serve("onnx-serve-resnet18", on, model, logs),
                  [Bench("onnx-serve-resnet18", model, levels, timing)])
    if options.skip_peers:
        return
    models = peer_models(work, {model: source})
    for kind in ("pytriton", "mlserver", *(("kserve",) if options.with_kserve else ())):
        key = f"{kind}-resnet18"
        session.serve(key, lambda kind=kind, key=key: start_peer(kind, key, models, model, logs),  # type: ignore[misc]
                      [Bench(key, model, levels, timing)])
