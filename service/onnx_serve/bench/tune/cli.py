"""`onnx-serve tune MODEL`: searches the model's serving configuration against a server, with the bench tool.

    onnx-serve tune mnist-cnn --repository models --concurrency 1,8,32 --p99-ms 40 --budget-s 300 --out tuned.yaml
    onnx-serve tune mnist-cnn --url 127.0.0.1:8001 --repository models --apply      # a live server, reloaded

Without --url it starts `onnx-serve serve` itself for each point (so --workers is searched too); with --url it
tunes that running server through reloads (its model directory is in --repository). Exit 0 done, 2 setup errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_serve.help_format import DefaultsHelpFormatter

DEFAULT_CONCURRENCY = (1, 8, 32)


def _levels(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _budget(text: str) -> float | str:
    if text == "shipped":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds or 'shipped', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of milliseconds, got {value}")
    return value


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tune", help="search a model's serving configuration for the most throughput within a p99 budget",
        description="Coarse-to-fine search over instance_group.count, intra-op threads per instance, "
        "dynamic_batching.max_queue_delay_microseconds and preferred_batch_size, max_batch_size and (when it "
        "starts the servers itself) --workers. Each point is an `onnx-serve bench` sweep (its stability rule). "
        "Prints every point, the best configuration within the p99 budget at each concurrency and the diff of "
        "the chosen config.yaml; --out writes it, --apply puts it in place (and reloads a live server).",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="model name (its directory in --repository)")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="the model repository")
    parser.add_argument("--url", help="a running server (HOST:PORT) serving --repository: tuned through reloads; "
                        "without it, the tuner starts a server per point")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU per request")
    parser.add_argument("--p99-ms", type=_budget, metavar="MS|shipped",
                        help="latency budget: a level over it does not count; `shipped`: the shipped config's own "
                        "p99 at --target-concurrency, so nothing slower than what ships is chosen")
    parser.add_argument("--concurrency", type=_levels, default=list(DEFAULT_CONCURRENCY), metavar="C1,C2,...")
    parser.add_argument("--target-concurrency", type=int, metavar="C",
                        help="the level whose best configuration is written (default: the highest)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="time the search may take")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--window", type=float, default=1.5, help="stability window (the bench's rule)")
    parser.add_argument("--workers", type=int, default=1, help="with --url: the server's --workers")
    parser.add_argument("--out", type=Path, metavar="CONFIG.yaml", help="write the chosen config.yaml here")
    parser.add_argument("--apply", action="store_true",
                        help="put the chosen config.yaml in the model directory (and reload a live server)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="every point as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="throughput vs p99 chart (the `plot` extra)")
    parser.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from onnx_serve.bench.report import write_json
    from onnx_serve.bench.tune import report
    from onnx_serve.bench.tune.search import Point, Search, best_per_concurrency, confirmed
    from onnx_serve.bench.tune.space import Space, from_config_yaml
    from onnx_serve.bench.tune.targets import LaunchedTarget, LiveTarget, Timing, render_config
    from onnx_serve.core.settings import cpu_quota

    model_dir = args.repository / args.model
    if not model_dir.is_dir():
        print(f"onnx-serve tune: {model_dir} is not a model directory (give its repository with --repository)",
              file=sys.stderr)
        return 2
    if args.budget_s <= 0 or args.duration <= 0 or args.window <= 0:
        print("onnx-serve tune: --budget-s, --duration and --window must be positive", file=sys.stderr)
        return 2
    target_level = args.target_concurrency or max(args.concurrency)
    if target_level not in args.concurrency:
        print(f"onnx-serve tune: --target-concurrency {target_level} is not one of --concurrency", file=sys.stderr)
        return 2
    timing = Timing(args.warmup, args.duration, args.window)
    try:
        target: LaunchedTarget | LiveTarget = (
            LiveTarget(args.url, model_dir, args.concurrency, timing, args.server_pid) if args.url
            else LaunchedTarget(model_dir, args.concurrency, timing))
    except (OSError, ValueError) as exc:
        print(f"onnx-serve tune: {exc}", file=sys.stderr)
        return 2
    shipped = from_config_yaml(target.raw, args.workers if args.url else 1)
    space = Space(cpus=max(1, int(cpu_quota())), vary_workers=not args.url,
                  model_max_batch=max(64, shipped.max_batch_size))

    def progress(point: Point) -> None:
        shown = point.measurement.error or f"score {point.score:.2f}"
        print(f"  point {len(search.result.points)} ({point.phase}): {point.config.short()}: {shown}",
              file=sys.stderr, flush=True)

    shipped_budget = args.p99_ms == "shipped"
    search = Search(target.measure, space, args.concurrency, args.budget_s,
                    None if shipped_budget else args.p99_ms, on_point=progress,
                    p99_of_shipped_at=target_level if shipped_budget else None)
    search.target = target_level
    try:
        result = search.run(shipped)
    except BaseException:
        target.close()
        raise
    p99_ms = search.p99_ms  # with `shipped`, what the shipped config measured
    chosen = best_per_concurrency(result.points, [target_level], p99_ms)[target_level] or result.baseline
    unconfirmed = not confirmed(result, target_level, p99_ms)
    if unconfirmed:  # its gain was one lucky measurement (or the shipped one's an unlucky one): keep what ships
        chosen = result.baseline
    # The shipped config stays as it is written (yaml.safe_dump would drop its comments).
    text = target.original if chosen.config == shipped else render_config(target.raw, chosen.config)
    print(report.points_table(result, args.concurrency, p99_ms))
    if p99_ms:
        where = f" (the shipped config's p99 at c={target_level})" if shipped_budget else ""
        print(f"\nbest within p99 <= {p99_ms:.2f} ms{where}:")
    else:
        print("\nbest (no p99 budget):")
    for line in report.best_lines(result, args.concurrency, p99_ms):
        print(f"  {line}")
    print(f"  {report.confirmation_line(result, target_level)}")
    if unconfirmed:
        print(f"note: the gain at c={target_level} did not hold when measured again: the shipped config stays")
    if result.budget_exhausted:
        print(f"note: the budget ({args.budget_s:g} s) ended the search after {len(result.points)} points")
    if chosen.config.workers != shipped.workers:
        print(f"note: serve with --workers {chosen.config.workers}")
    print(f"\nconfig.yaml for c={target_level}:")
    print(report.config_diff(target.original, text, str(model_dir / "config.yaml")), end="")
    if args.out:
        args.out.write_text(text)
    if args.apply and isinstance(target, LiveTarget):
        refused = target.load(text)
        if refused:
            print(f"onnx-serve tune: could not apply: {refused}", file=sys.stderr)
    else:
        target.close()
        if args.apply:
            (model_dir / "config.yaml").write_text(text)
    if args.json:
        write_json(args.json, report.document(result, args.concurrency, p99_ms, "live" if args.url else "launched",
                                              args.budget_s, chosen))
    if args.plot:
        try:
            report.chart(args.plot, result, args.concurrency, p99_ms, f"onnx-serve tune {args.model}")
        except ImportError:
            print("onnx-serve tune: --plot needs matplotlib (pip install 'onnx-serve[plot]')", file=sys.stderr)
    return 0
