"""`onnx-serve bench`: our perf_analyzer. Sweeps concurrency levels against a KServe V2 server (ours or any
other) and reports throughput, latency percentiles, errors, the server-side breakdown and client CPU;
`--driver h2load` makes the load with nghttp2's C client instead of grpc.aio (bench/h2load.py); `--raw MODEL`
measures in-process ONNX Runtime instead, the ceiling a server can approach."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import grpc

from onnx_serve import __version__
from onnx_serve.bench import h2load
from onnx_serve.bench.launch import ServerNotReady, wait_for_model
from onnx_serve.bench.load import LevelPlan, LoadGenerator, open_channels
from onnx_serve.bench.probe import ModelStatisticsProbe, ServerUnavailable, take_snapshot
from onnx_serve.bench.raw import DEFAULT_BATCH_SIZES, format_raw, run_raw
from onnx_serve.bench.report import ProgressBar, format_table, notes_for, plot_series, summarize, write_json
from onnx_serve.bench.workload import (
    APIS,
    Workload,
    classify_workload,
    infer_workload,
    inputs_from_metadata,
    parse_shape_overrides,
    random_image,
)
from onnx_serve.core.settings import cpu_quota
from onnx_serve.help_format import DefaultsHelpFormatter
from onnx_serve.protos.inference import grpc_service_pb2 as pb

EXIT_OK, EXIT_REQUEST_ERRORS, EXIT_SETUP, EXIT_SERVER_GONE = 0, 1, 2, 3
DRIVERS = ("python", "h2load")
DEFAULT_DURATION_S, DEFAULT_WARMUP_S = 10.0, 2.0
RAW_DURATION_S, RAW_WARMUP_S = 3.0, 0.5


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench", help="measure a server's throughput and latency (or raw ONNX Runtime with --raw)",
        description="Keeps exactly C requests in flight for each concurrency level and reports requests/s, "
        "items/s, latency percentiles, errors by gRPC code, the server-side breakdown (ModelStatistics) and the "
        "client's own CPU use. Works against any KServe V2 gRPC server. --driver h2load sends the same request "
        "with nghttp2's h2load (a C client that leaves the CPU to the server) at --points CxM. A server that goes "
        "away mid-run stops the bench with exit status 3. With --raw MODEL.onnx, measures in-process ONNX "
        "Runtime at several batch sizes instead (the ceiling).",
        formatter_class=DefaultsHelpFormatter)
    target = parser.add_argument_group("target")
    target.add_argument("--url", default="127.0.0.1:8001", help="server address HOST:PORT")
    target.add_argument("--model", help="model name (required unless --raw)")
    target.add_argument("--model-version", default="", help="model version; empty = the server's choice")
    target.add_argument("--api", choices=APIS, default="infer",
                        help="infer = V2 ModelInfer; stream = V2 ModelStreamInfer (C in flight on one stream per "
                        "channel); classify / classify-stream = the Classify API with encoded images")
    target.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the model to answer ModelMetadata before giving up")
    load = parser.add_argument_group("load")
    load.add_argument("--driver", choices=DRIVERS, default="python",
                      help="python = grpc.aio in this process; h2load = nghttp2's h2load (C, HTTP/2) sends the "
                      "pre-serialized request, checked first, and the server's ModelStatistics tell its "
                      "successes from gRPC errors (unary --api infer or classify)")
    load.add_argument("--concurrency", type=_int_list, default=[1, 4, 16, 64], metavar="C1,C2,...",
                      help="requests kept in flight; one level per value (h2load: 1 connection x C streams)")
    load.add_argument("--points", type=h2load.parse_points, metavar="CxM,...",
                      help="--driver h2load: C connections x M concurrent streams each, e.g. 1x8,4x32 (instead of "
                      "--concurrency)")
    load.add_argument("--h2load", default="h2load", metavar="PATH",
                      help=f"--driver h2load: the h2load binary (Debian package {h2load.PACKAGE})")
    load.add_argument("--h2load-threads", type=int, default=1, metavar="N",
                      help="--driver h2load: h2load's native threads (-t), at most one per connection")
    load.add_argument("--duration", type=float, metavar="SECONDS",
                      help=f"measured time per level (default {DEFAULT_DURATION_S:g}; --raw: {RAW_DURATION_S:g} "
                      "per batch size)")
    load.add_argument("--warmup", type=float, metavar="SECONDS",
                      help=f"unmeasured time before each level (default {DEFAULT_WARMUP_S:g}; --raw: {RAW_WARMUP_S:g})")
    load.add_argument("--window", type=float, default=2.0, metavar="SECONDS",
                      help="stability window; a level is stable when the last three windows' throughputs are "
                      "within 10%% of their mean")
    load.add_argument("--max-extra-windows", type=int, default=3, metavar="N",
                      help="windows added to an unstable level before it is reported as unstable")
    load.add_argument("--batch-size", type=int, default=1, metavar="N", help="samples (images) per request")
    load.add_argument("--input", nargs="+", default=["random"], metavar="random|FILE",
                      help="classify: image files (random = a noise PNG at the model's input size); infer/stream: "
                      "random data shaped from ModelMetadata, or one .npy file per model input")
    load.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2,...",
                      help="full shape of a random input, for models whose metadata has dynamic dims")
    load.add_argument("--top-k", type=int, default=0, help="classify: top_k (0 = the model's default)")
    load.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                      help="per-request deadline (unary APIs); 0 = none")
    load.add_argument("--channels", type=int, default=1, metavar="N",
                      help="gRPC channels (TCP connections); requests are spread over them. Use several against "
                      "--workers N servers: the kernel spreads connections, not requests, over SO_REUSEPORT workers")
    load.add_argument("--codec", choices=("bytes", "proto"), default="bytes",
                      help="bytes = send one pre-serialized request and do not parse answers (cheapest client); "
                      "proto = serialize and parse messages every call (what most clients do)")
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, metavar="OUT.json", help="write every number as JSON")
    output.add_argument("--plot", type=Path, metavar="OUT.png",
                        help="throughput vs p99 latency chart (needs matplotlib: the `plot` extra)")
    output.add_argument("--label", default="", help="name of this run in the JSON and the chart")
    output.add_argument("--server-pid", type=int, help="also report that process tree's CPU use and RSS (Linux)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    raw = parser.add_argument_group("raw ONNX Runtime (--raw)")
    raw.add_argument("--raw", type=Path, metavar="MODEL",
                     help="measure in-process ONNX Runtime on this .onnx file or model directory, no server")
    raw.add_argument("--batch-sizes", type=_int_list, default=list(DEFAULT_BATCH_SIZES), metavar="B1,B2,...")
    raw.add_argument("--intra-op-threads", type=int, default=0,
                     help="0 = the server's default: sized to the CPU quota (or the model's config.yaml)")
    raw.add_argument("--providers", default="cpu", help="execution providers for --raw, comma-separated")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    raw = args.raw is not None
    if args.duration is None:
        args.duration = RAW_DURATION_S if raw else DEFAULT_DURATION_S
    if args.warmup is None:
        args.warmup = RAW_WARMUP_S if raw else DEFAULT_WARMUP_S
    try:
        if raw:
            return _run_raw(args)
        if not args.model:
            print("onnx-serve bench: --model is required (or --raw MODEL)", file=sys.stderr)
            return EXIT_SETUP
        if args.batch_size < 1 or args.channels < 1 or args.duration <= 0 or args.window <= 0:
            print("onnx-serve bench: --batch-size, --channels, --duration and --window must be positive",
                  file=sys.stderr)
            return EXIT_SETUP
        if args.driver == "h2load":
            _check_h2load_arguments(args)
        elif args.points:
            raise ValueError("--points CxM needs --driver h2load (the python driver takes --concurrency and "
                             "--channels)")
        document = asyncio.run(sweep(args))
    except ServerUnavailable as exc:
        if exc.levels:
            print(format_table(exc.levels))
        print(f"onnx-serve bench: {exc}; stopped", file=sys.stderr)
        return EXIT_SERVER_GONE
    except (ServerNotReady, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"onnx-serve bench: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130
    print(format_table(document["levels"]))
    for note in document["notes"]:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, document)
    if args.plot:
        try:
            plot_series(args.plot, [(document["label"], document["levels"])],
                        f"{document['model']} ({document['api']}, batch {document['batch_size']}) at {args.url}")
        except ImportError:
            print("onnx-serve bench: --plot needs matplotlib (pip install 'onnx-serve[plot]')", file=sys.stderr)
            return EXIT_SETUP
    return EXIT_REQUEST_ERRORS if any(level["error_count"] for level in document["levels"]) else EXIT_OK


def _check_h2load_arguments(args: argparse.Namespace) -> None:
    """What h2load cannot do is refused up front; a missing h2load too (H2loadMissing), before any waiting."""
    if args.api not in ("infer", "classify"):
        raise ValueError(f"--driver h2load sends unary calls: --api infer or classify, not {args.api}")
    for option, value, default in (("--codec", args.codec, "bytes"), ("--channels", args.channels, 1),
                                   ("--timeout", args.timeout, 0.0)):
        if value != default:
            raise ValueError(f"{option} is the python driver's; --driver h2load sends the same bytes on the "
                             "connections of --points CxM, without deadlines")
    if args.h2load_threads < 1:
        raise ValueError("--h2load-threads must be positive")
    args.h2load = h2load.find_h2load(args.h2load)


def build_workload(args: argparse.Namespace, metadata: pb.ModelMetadataResponse) -> Workload:
    inputs = inputs_from_metadata(metadata)
    files = [] if args.input == ["random"] else [Path(p) for p in args.input]
    if args.api.startswith("classify"):
        images = [p.read_bytes() for p in files] or [random_image(inputs)]
        return classify_workload(args.model, args.model_version, images, args.batch_size,
                                 args.api == "classify-stream", args.top_k)
    bad = [p for p in files if p.suffix != ".npy"]
    if bad:
        raise ValueError(f"--api {args.api} takes random data or .npy files, not {bad[0]}")
    return infer_workload(args.model, args.model_version, inputs, args.batch_size, args.api == "stream",
                          parse_shape_overrides(args.shape), files)


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    driver = getattr(args, "driver", "python")  # `onnx-serve tune` builds its own arguments: the python driver
    channels = open_channels(args.url, args.channels if driver == "python" else 1)
    extra: dict[str, Any] = {"driver": driver}
    levels: list[dict[str, Any]] = []
    try:
        metadata = await asyncio.to_thread(wait_for_model, args.url, args.model, args.model_version, args.wait)
        workload = build_workload(args, metadata)
        statistics = ModelStatisticsProbe(channels[0], args.model, args.model_version)
        plan = LevelPlan(args.warmup, args.duration, args.window, args.max_extra_windows, args.timeout or None)
        if driver == "h2load":
            points = args.points or [h2load.Point(1, c) for c in args.concurrency]
            extra["points"] = [point.label for point in points]
            runner = h2load.H2loadDriver(args.h2load, f"http://{args.url}{workload.method}", workload, channels[0],
                                         statistics, plan, args.h2load_threads, args.server_pid)
            extra["h2load"] = runner.describe()
        bar = ProgressBar(plan.windows * len(extra.get("points", args.concurrency)), enabled=not args.no_progress)
        try:
            if driver == "h2load":
                try:
                    await runner.check_body()
                    await runner.sweep(points, levels, bar.level, bar.window if bar.active else None)
                finally:
                    runner.close()
            else:
                generator = LoadGenerator(channels, workload, args.codec)
                for concurrency in args.concurrency:
                    bar.level(f"c={concurrency}")
                    run = await generator.run_level(concurrency, plan,
                                                    lambda: take_snapshot(statistics, args.server_pid), bar.window)
                    levels.append(summarize(run, workload.items_per_request))
        except ServerUnavailable as exc:
            exc.levels = levels  # what was measured before it went
            raise
        finally:
            bar.close()
    finally:
        for channel in channels:
            await channel.close()
    quota = cpu_quota()
    notes = notes_for(levels, quota) + (h2load.notes(statistics) if driver == "h2load" else [])
    return {
        "tool": "onnx-serve bench",
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": args.label or f"{args.model} {args.api} @ {args.url}",
        "url": args.url,
        "model": args.model,
        "model_version": args.model_version,
        "api": args.api,
        "batch_size": args.batch_size,
        "items_per_request": workload.items_per_request,
        "request": workload.describe,
        "request_bytes": len(workload.payload()),
        "codec": args.codec,
        "channels": args.channels if driver == "python" else None,
        **extra,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "window_s": plan.effective_window_s,
        "timeout_s": args.timeout or None,
        "server_pid": args.server_pid,
        "server_statistics": {"available": statistics.available, "reason": statistics.unavailable_reason},
        "client": {"python": platform.python_version(), "grpcio": grpc.__version__, "cpus": quota,
                   "nproc": os.cpu_count()},
        "levels": levels,
        "notes": notes,
    }


def _run_raw(args: argparse.Namespace) -> int:
    def progress(label: str) -> None:
        if not args.no_progress and sys.stderr.isatty():
            sys.stderr.write(f"\rraw ONNX Runtime: {label}\x1b[K")
            sys.stderr.flush()

    document = run_raw(args.raw, args.batch_sizes, args.duration, args.warmup, args.intra_op_threads,
                       [p for p in args.providers.split(",") if p.strip()], progress)
    if not args.no_progress and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    print(format_raw(document))
    if args.json:
        write_json(args.json, document)
    return EXIT_OK
