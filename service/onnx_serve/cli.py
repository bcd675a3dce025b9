"""`onnx-serve` command line: serve (the default), classify, bench. Every serve flag can also be set by an
environment variable ONNX_SERVE_<FLAG> (e.g. ONNX_SERVE_GRPC_PORT=9001); a flag wins over its variable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from onnx_serve import __version__
from onnx_serve.core.settings import Settings, provider_name

SUBCOMMANDS = ("serve", "classify", "bench")
TRUE = {"1", "true", "yes", "on"}


def _env(flag: str, default: object) -> object:
    value = os.environ.get("ONNX_SERVE_" + flag.upper().replace("-", "_"))
    if value is None:
        return default
    if isinstance(default, bool):
        return value.strip().lower() in TRUE
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()

    def option(flag: str, default: object, help_text: str, kind: type | None = None, **kwargs: object) -> None:
        env = "ONNX_SERVE_" + flag.upper().replace("-", "_")
        if isinstance(default, bool):
            parser.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=_env(flag, default),
                                help=f"{help_text} [env {env}]")
        else:
            parser.add_argument(f"--{flag}", type=kind or str, default=_env(flag, default),
                                help=f"{help_text} (default: %(default)s) [env {env}]", **kwargs)

    option("model-repository", str(d.model_repository), "model repository directory", Path)
    option("host", d.host, "address the gRPC server binds to")
    option("grpc-port", d.grpc_port, "gRPC port; 0 picks a free port (logged)", int)
    option("metrics-port", d.metrics_port, "Prometheus /metrics port; 0 picks a free port, -1 disables", int)
    option("metrics-host", "", "address the metrics server binds to (default: --host)")
    option("log-level", d.log_level, "debug, info, warning or error",
           choices=["debug", "info", "warning", "error"])
    option("log-format", d.log_format, "text or json (one object per line)", choices=["text", "json"])
    option("access-log", d.access_log, "log one line per request at INFO")
    option("grace-period", d.grace_period_s, "seconds in-flight requests get to finish after SIGTERM", float)
    option("workers", d.workers, "server processes sharing the port (SO_REUSEPORT)", int)
    option("execution-providers", "cuda,cpu", "ONNX Runtime execution providers in order of preference, for "
           "models whose config names none (cuda, cpu, tensorrt, or full ORT names)")
    option("strict-providers", d.strict_providers, "fail a model's load instead of falling back to CPU when a "
           "requested execution provider is unavailable")
    option("intra-op-threads", d.intra_op_threads, "ONNX Runtime intra-op threads per model instance; 0 sizes "
           "them to the CPU quota (cgroup limit) divided among workers and instances", int)
    option("inter-op-threads", d.inter_op_threads, "ONNX Runtime inter-op threads; 0 = 1", int)
    option("max-message-bytes", d.max_message_bytes, "largest gRPC message accepted or sent", int)
    option("max-connection-age", d.max_connection_age_s, "close client connections after this many seconds "
           "(clients reconnect, which rebalances load after a scale-out); 0 = never", float)
    option("max-connection-age-grace", d.max_connection_age_grace_s, "seconds a connection closed for age gets "
           "to finish its RPCs", float)
    option("max-concurrent-streams", d.max_concurrent_streams, "HTTP/2 streams per connection; 0 = grpc default",
           int)
    option("tls-cert", "", "PEM certificate chain: turns TLS on (plaintext is then refused)")
    option("tls-key", "", "PEM private key of --tls-cert")
    option("tls-client-ca", "", "PEM CA bundle: require and verify client certificates (mutual TLS)")
    option("tracing", d.tracing, "OpenTelemetry spans per request (queue, preprocess, inference); exporter set by "
           "OTEL_* variables, needs the tracing extra")
    option("auth-token-file", "", "file of accepted bearer tokens, one per line: every RPC but health and "
           "reflection then needs 'authorization: Bearer <token>'")


def settings_from(args: argparse.Namespace) -> Settings:
    def path(value: str | Path) -> Path | None:
        return Path(value) if str(value) else None

    return Settings(
        model_repository=Path(args.model_repository),
        host=args.host,
        grpc_port=int(args.grpc_port),
        metrics_port=int(args.metrics_port),
        metrics_host=args.metrics_host or None,
        log_level=args.log_level,
        log_format=args.log_format,
        access_log=bool(args.access_log),
        grace_period_s=float(args.grace_period),
        workers=int(args.workers),
        execution_providers=tuple(provider_name(p) for p in str(args.execution_providers).split(",") if p.strip()),
        strict_providers=bool(args.strict_providers),
        intra_op_threads=int(args.intra_op_threads),
        inter_op_threads=int(args.inter_op_threads),
        max_message_bytes=int(args.max_message_bytes),
        max_connection_age_s=float(args.max_connection_age),
        max_connection_age_grace_s=float(args.max_connection_age_grace),
        max_concurrent_streams=int(args.max_concurrent_streams),
        tls_cert=path(args.tls_cert),
        tls_key=path(args.tls_key),
        tls_client_ca=path(args.tls_client_ca),
        auth_token_file=path(args.auth_token_file),
        tracing=bool(args.tracing),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-serve",
        description="Serve ONNX image classifiers over gRPC (KServe V2 protocol + Classify API). "
        "With no subcommand, runs `serve`. Subcommands: serve, classify, bench.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-serve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,classify,bench}")
    serve = sub.add_parser("serve", help="serve a model repository (the default)",
                           description="Serve a model repository on gRPC, with Prometheus metrics.")
    add_serve_arguments(serve)
    from onnx_serve.bench.cli import add_bench_parser
    from onnx_serve.client.cli import add_classify_parser

    add_classify_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    return int(args.func(args) if hasattr(args, "func") else serve(args))


def serve(args: argparse.Namespace) -> int:
    from onnx_serve.logs import setup_logging
    from onnx_serve.workers import run_server

    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format, settings.access_log)
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
