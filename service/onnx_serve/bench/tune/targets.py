"""Where `onnx-serve tune` measures a point: each is one `onnx-serve bench` sweep (bench.cli.sweep: the bench's
load generator and stability rule, ModelStatistics for the mean batch, /proc for server CPU per request).

- LaunchedTarget (`--repository`): for each point, `onnx-serve serve` on a scratch repository holding only the
  model (its version directories linked, not copied) with the point's config.yaml and --workers; stopped after.
- LiveTarget (`--url` with `--repository`): a running server. Each point is written to the model's config.yaml
  and loaded with RepositoryModelLoad (new sessions load beside the serving ones, as for any reload); the
  original config.yaml is put back and reloaded at the end, unless --apply keeps the best.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from onnx_serve.bench.cli import sweep
from onnx_serve.bench.launch import ServerNotReady, start_server, wait_for_model
from onnx_serve.bench.tune.search import LevelResult, Measurement
from onnx_serve.bench.tune.space import TuneConfig, to_config_yaml
from onnx_serve.protos.inference import grpc_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class Timing:
    """Per level: unmeasured warm-up, measured duration, stability window (the bench's flags)."""

    warmup_s: float = 2.0
    duration_s: float = 6.0
    window_s: float = 1.5
    max_extra_windows: int = 2


def bench_arguments(url: str, model: str, concurrency: Sequence[int], timing: Timing, server_pid: int | None,
                    channels: int = 1) -> argparse.Namespace:
    """What `onnx-serve bench --url URL --model MODEL --concurrency ...` parses to (batch-1 V2 ModelInfer)."""
    return argparse.Namespace(
        url=url, model=model, model_version="", api="infer", wait=60.0, concurrency=list(concurrency),
        duration=timing.duration_s, warmup=timing.warmup_s, window=timing.window_s,
        max_extra_windows=timing.max_extra_windows, batch_size=1, input=["random"], shape=[], top_k=0, timeout=0.0,
        channels=channels, codec="bytes", json=None, plot=None, label="", server_pid=server_pid, no_progress=True)


def run_sweep(arguments: argparse.Namespace) -> Measurement:
    try:
        document: dict[str, Any] = asyncio.run(sweep(arguments))
    except (ServerNotReady, ValueError, RuntimeError) as exc:  # what `onnx-serve bench` reports as setup errors
        return Measurement(error=str(exc))
    return Measurement(tuple(LevelResult.from_bench(level) for level in document["levels"]))


def read_config(model_dir: Path) -> tuple[str, dict[str, Any]]:
    path = model_dir / "config.yaml"
    text = path.read_text() if path.is_file() else ""
    raw = yaml.safe_load(text) if text else {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: not a mapping")
    return text, raw


def render_config(raw: dict[str, Any], config: TuneConfig) -> str:
    return yaml.safe_dump(to_config_yaml(raw, config), sort_keys=False)


class LaunchedTarget:
    def __init__(self, model_dir: Path, concurrency: Sequence[int], timing: Timing, serve_args: Sequence[str] = ()
                 ) -> None:
        self.model_dir, self.concurrency, self.timing = model_dir, list(concurrency), timing
        self.serve_args = list(serve_args)
        self.original, self.raw = read_config(model_dir)
        self._scratch = Path(tempfile.mkdtemp(prefix="onnx-serve-tune-"))
        self.repository = self._scratch / "models"
        target = self.repository / model_dir.name
        target.mkdir(parents=True)
        for item in model_dir.iterdir():
            if item.name == "config.yaml":
                continue
            (target / item.name).symlink_to(item.resolve())

    def measure(self, config: TuneConfig) -> Measurement:
        (self.repository / self.model_dir.name / "config.yaml").write_text(render_config(self.raw, config))
        try:
            server = start_server(self.repository, "--workers", str(config.workers), "--execution-providers", "cpu",
                                  "--grace-period", "1", *self.serve_args, timeout=120)
        except AssertionError as exc:  # its message ends with the server's whole log
            return Measurement(error=_first_error(str(exc)))
        try:
            wait_for_model(server.url, self.model_dir.name, timeout=60, process=server.process)
            return run_sweep(bench_arguments(server.url, self.model_dir.name, self.concurrency, self.timing,
                                             server.pid, channels=2 * config.workers if config.workers > 1 else 1))
        except ServerNotReady as exc:
            return Measurement(error=f"{exc}: {_first_error(server.log())}")
        finally:
            server.stop(timeout=20)

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


class LiveTarget:
    def __init__(self, url: str, model_dir: Path, concurrency: Sequence[int], timing: Timing,
                 server_pid: int | None = None) -> None:
        self.url, self.model_dir, self.concurrency, self.timing = url, model_dir, list(concurrency), timing
        self.server_pid = server_pid
        self.original, self.raw = read_config(model_dir)

    def load(self, text: str) -> str:
        """Writes config.yaml and reloads the model; '' or the server's refusal."""
        (self.model_dir / "config.yaml").write_text(text)
        with grpc.insecure_channel(self.url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad",
                                       request_serializer=pb.RepositoryModelLoadRequest.SerializeToString,
                                       response_deserializer=pb.RepositoryModelLoadResponse.FromString)
            try:
                call(pb.RepositoryModelLoadRequest(model_name=self.model_dir.name), timeout=120)
            except grpc.RpcError as exc:
                return f"RepositoryModelLoad: {exc.code().name}: {exc.details()}"
        return ""

    def measure(self, config: TuneConfig) -> Measurement:
        refused = self.load(render_config(self.raw, config))
        if refused:
            return Measurement(error=refused)
        try:
            wait_for_model(self.url, self.model_dir.name, timeout=60)
        except ServerNotReady as exc:
            return Measurement(error=str(exc))
        return run_sweep(bench_arguments(self.url, self.model_dir.name, self.concurrency, self.timing,
                                         self.server_pid))

    def close(self) -> None:
        """Puts the original config.yaml back and reloads it."""
        self.load(self.original)


def _first_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    wanted = [line for line in lines if "error" in line.lower() or "unavailable" in line.lower()]
    return (wanted or lines or ["no output"])[0][:300]
