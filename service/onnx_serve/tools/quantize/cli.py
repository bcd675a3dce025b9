"""`onnx-serve quantize MODEL_DIR --calibration IMAGES_DIR`: static INT8 quantization of a model of the
repository into a new version, written only when it agrees with FP32 on held-out samples.

Exit status: 0 written, 1 refused by the gate (the figures are printed, nothing is written), 2 a model, folder or
version that cannot be used (one line that says which)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from onnx_serve.help_format import DefaultsHelpFormatter
from onnx_serve.tools.quantize.defaults import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_HOLDOUT_SAMPLES,
    DEFAULT_KEEP_FP32,
    DEFAULT_METHOD,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_SAMPLES,
    METHODS,
)

EXIT_WRITTEN, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] (0.99 = 99%%), got {value}")
    return value


def _positive_ints(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(",") if part.strip()) or (1,)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "quantize", help="quantize a model to INT8 as a new version, gated on agreement with FP32",
        description="Static INT8 quantization with ONNX Runtime (QDQ, per-channel INT8 weights, UINT8 activations). "
        "Calibration images go through the model's own preprocess (config.yaml), as the server runs it; a model "
        "without preprocess takes .npy tensors. The INT8 model is checked against FP32 on held-out samples (top-1 "
        "agreement, mean absolute probability difference, accuracy when the files sit in folders named after "
        "their labels, raw ONNX Runtime images/s of both) and written as a new version of the same model only if "
        "it agrees often enough. Exit 0 written, 1 refused, 2 unusable input.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="the model's directory, e.g. models/NAME")
    parser.add_argument("--calibration", type=Path, required=True, metavar="DIR",
                        help="folder of calibration images (.npy tensors for a model without preprocess), searched "
                        "recursively; subfolders named after labels give the samples labels")
    parser.add_argument("--samples", type=_positive_int, default=DEFAULT_SAMPLES, metavar="N",
                        help="calibration samples, drawn (seeded) from the folder; the rest are held out")
    parser.add_argument("--version", type=_positive_int, metavar="V", help="the new version (default: highest + 1)")
    parser.add_argument("--from-version", type=_positive_int, metavar="V",
                        help="the FP32 version to quantize (default: the latest one that is not quantized)")
    check = parser.add_argument_group("the check against FP32")
    check.add_argument("--holdout", type=Path, metavar="DIR",
                       help="held-out samples in their own folder (default: the calibration folder's files not "
                       "calibrated on)")
    check.add_argument("--holdout-samples", type=_positive_int, default=DEFAULT_HOLDOUT_SAMPLES, metavar="N",
                       help="at most this many held-out samples")
    check.add_argument("--min-agreement", type=_fraction, default=DEFAULT_MIN_AGREEMENT, metavar="FRACTION",
                       help="refuse to write below this top-1 agreement with FP32")
    check.add_argument("--batch-sizes", type=_positive_ints, default=DEFAULT_BATCH_SIZES, metavar="B1,B2,...",
                       help="batch sizes of the raw ONNX Runtime speed test")
    check.add_argument("--speed-duration", type=float, default=1.0, metavar="SECONDS",
                       help="measured time per model and batch size")
    method = parser.add_argument_group("quantization")
    method.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help="calibration method (MinMax was measured best: docs/benchmarks.md)")
    method.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    method.add_argument("--no-reduce-range", action="store_true",
                        help="full 8-bit weights; only for CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX): elsewhere "
                        "ONNX Runtime's U8S8 kernels saturate on them")
    method.add_argument("--keep-fp32", type=_names, default=DEFAULT_KEEP_FP32, metavar="OP,...",
                        help="op types left in float")
    method.add_argument("--exclude-nodes", type=_names, default=(), metavar="NAME,...", help="nodes left in float")
    method.add_argument("--seed", type=int, default=0, help="seed of the calibration / held-out split")
    output = parser.add_argument_group("output")
    output.add_argument("--report", type=Path, metavar="OUT.json",
                        help="also write the JSON report here (the only file a refused run writes)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(func=run_quantize)


def _command(args: argparse.Namespace) -> str:
    """The run as a command line, for the report and the model card (the defaults it relied on included)."""
    words = ["onnx-serve", "quantize", str(args.model_dir), "--calibration", str(args.calibration),
             "--samples", str(args.samples)]
    for flag, value in (("--holdout", args.holdout), ("--version", args.version),
                        ("--from-version", args.from_version)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--method", args.method]
    if args.keep_fp32 != DEFAULT_KEEP_FP32:
        words += ["--keep-fp32", ",".join(args.keep_fp32)]
    if args.exclude_nodes:
        words += ["--exclude-nodes", ",".join(args.exclude_nodes)]
    words += [flag for flag, on in (("--per-tensor", args.per_tensor), ("--no-reduce-range", args.no_reduce_range))
              if on]
    return shlex.join(words)


def run_quantize(args: argparse.Namespace) -> int:
    from onnx_serve.tools.quantize.errors import QuantizeError
    from onnx_serve.tools.quantize.pipeline import QuantizeRequest, run
    from onnx_serve.tools.quantize.quantizer import QuantizeOptions
    from onnx_serve.tools.quantize.report import summary

    if args.speed_duration <= 0:
        print("onnx-serve quantize: --speed-duration must be positive", file=sys.stderr)
        return EXIT_ERROR
    options = QuantizeOptions(method=args.method, per_channel=not args.per_tensor,
                              reduce_range=not args.no_reduce_range, keep_fp32=args.keep_fp32,
                              exclude_nodes=args.exclude_nodes)
    request = QuantizeRequest(
        model_dir=args.model_dir, calibration=args.calibration, samples=args.samples, version=args.version,
        from_version=args.from_version, holdout=args.holdout, holdout_samples=args.holdout_samples,
        min_agreement=args.min_agreement, options=options, batch_sizes=args.batch_sizes,
        speed_duration_s=args.speed_duration, seed=args.seed, progress=not args.no_progress, report=args.report,
        command=_command(args))
    try:
        document = run(request)
    except QuantizeError as exc:
        print(f"onnx-serve quantize: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    print(summary(document))
    return EXIT_WRITTEN if document["written"] else EXIT_REFUSED
