"""`onnx-serve` command line: serve (the default), classify, bench. Every serve flag can also be set by an
environment variable ONNX_SERVE_<FLAG> (e.g. ONNX_SERVE_GRPC_PORT=9001); a flag wins over its variable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from onnx_serve import __version__
from onnx_serve.core.settings import SETTINGS, SettingError, Settings, SettingSpec, settings_from_sources

SUBCOMMANDS = ("serve", "classify", "bench", "quantize", "tune", "health", "models")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag (with its aliases) per Settings field, all from its SettingSpec. Every flag's own default is None
    ("not given"), so that settings_from can let a given flag win over its variable and the variable over the
    field's default."""
    for spec in SETTINGS:
        help_text = f"{spec.help} (default: {spec.default_text}) [env {spec.env}]".replace("%", "%%")
        if spec.is_switch:
            parser.add_argument(*spec.options, dest=spec.name, action=Switch, type=_flag_type(spec), default=None,
                                help=help_text)
        elif spec.repeatable:  # once per item: --load-model a --load-model b
            parser.add_argument(*spec.options, dest=spec.name, action="append", type=str.strip, default=None,
                                help=help_text, metavar=spec.flag.upper().replace("-", "_"))
        else:
            parser.add_argument(*spec.options, dest=spec.name, type=_flag_type(spec), default=None,
                                choices=spec.choices or None, help=help_text,
                                metavar=None if spec.choices else (spec.unit or spec.flag).upper().replace("-", "_"))


class Switch(argparse.BooleanOptionalAction):
    """--flag / --no-flag, and also --flag=false or --flag true: Triton's boolean flags take a value
    (--strict-readiness=false), and manifests written for Triton spell them so."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: bool | None = None,
                 type: Callable[[str], bool] | None = None, help: str | None = None) -> None:
        super().__init__(option_strings, dest, default=default, type=type, help=help)
        self.nargs = "?"

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"argument {option_string}: takes no value")
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else values)


def _flag_type(spec: SettingSpec) -> Callable[[str], object]:
    """The spec's parser, with its error as argparse reports it ("argument --grpc-port: invalid integer ...")."""
    def parse(text: str) -> object:
        try:
            return spec.parse(text)
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The Settings of parsed `serve` arguments: each flag, else its ONNX_SERVE_* variable, else the default.
    Raises SettingError for a variable that does not parse."""
    flags = {spec.name: getattr(args, spec.name, None) for spec in SETTINGS}
    for spec in SETTINGS:  # a repeated flag's items (argparse lists them) as the field's tuple
        if spec.repeatable and flags[spec.name] is not None:
            flags[spec.name] = tuple(item for item in flags[spec.name] if item)  # type: ignore[union-attr]
    return settings_from_sources(flags, os.environ if environ is None else environ)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-serve",
        description="Serve ONNX image classifiers over gRPC (KServe V2 protocol + Classify API). "
        "With no subcommand, runs `serve`. Subcommands: serve, classify, bench, quantize, tune, health, models.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-serve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,classify,bench,quantize,tune,health,models}")
    serve_parser = sub.add_parser("serve", help="serve a model repository (the default)",
                                  description="Serve a model repository on gRPC, with Prometheus metrics.")
    add_serve_arguments(serve_parser)
    # Variables are read after parsing (a flag wins over them), so serve() reports their errors, as this parser.
    serve_parser.set_defaults(serve_parser=serve_parser)
    from onnx_serve.bench.cli import add_bench_parser
    from onnx_serve.bench.tune.cli import add_tune_parser
    from onnx_serve.client.cli import add_classify_parser
    from onnx_serve.client.health_cli import add_health_parser, add_models_parser
    from onnx_serve.tools.quantize.cli import add_quantize_parser

    add_classify_parser(sub)
    add_bench_parser(sub)
    add_quantize_parser(sub)
    add_tune_parser(sub)
    add_health_parser(sub)
    add_models_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    return int(args.func(args) if hasattr(args, "func") else serve(args))


def serve(args: argparse.Namespace) -> int:
    from onnx_serve.core.model_control import check_startup_models
    from onnx_serve.edges.grpc.server import check_security_settings
    from onnx_serve.logs import setup_logging
    from onnx_serve.server import check_repository
    from onnx_serve.workers import run_server

    try:
        settings = settings_from(args)
        # A TLS or token setting that cannot be honoured, or no repository, stops the server here, before any
        # port (or worker).
        check_security_settings(settings)
        check_repository(settings.model_repository)
        check_startup_models(settings)
    except SettingError as error:
        # argparse's error line and exit status 2, without the usage: a variable or a file is at fault, not the
        # flags' syntax.
        parser = args.serve_parser
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    # Triton's --log-verbose N (N >= 1) means debug lines, whatever --log-level says.
    setup_logging("debug" if settings.log_verbose else settings.log_level, settings.log_format, settings.access_log)
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
