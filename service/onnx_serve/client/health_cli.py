"""`onnx-serve health` and `onnx-serve models`: is a running server serving, and what does its repository hold.

`health` asks grpc.health.v1 Check, as Kubernetes gRPC probes and grpc_health_probe do, and exits 0 only when the
answer is SERVING: it works as a Docker HEALTHCHECK, a probe command or a script step, where grpcurl is not
installed. Exit status 1 otherwise (NOT_SERVING, an unknown service, an unreachable server), as Docker's
HEALTHCHECK expects (it reserves 2). `models` prints RepositoryIndex: each model version's state and, when it is
not READY (or its last reload failed), the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from onnx_serve.client.cli import EXIT_UNUSABLE, _describe, add_connection_arguments, add_url_argument, open_client
from onnx_serve.client.client import ClientError

EXIT_NOT_SERVING = 1
HEALTH_TIMEOUT_S = 5.0  # a probe answers at once or not at all: a hung server is unhealthy, not slow


def add_health_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "health", help="check that a running server is SERVING (exit 0), e.g. as a Docker HEALTHCHECK",
        description="Ask a running onnx-serve's grpc.health.v1 Check and print the status. Exit status: 0 SERVING; "
        "1 NOT_SERVING, unknown service or unreachable server (the reason on stderr).")
    add_url_argument(parser)
    parser.add_argument("--service", default="", metavar="NAME",
                        help='"" (the default) the whole server, ready when every model is; "liveness" the '
                        "process; a model's name that model")
    parser.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S,
                        help="seconds to wait for the answer (default: %(default)s)")
    add_connection_arguments(parser)
    parser.set_defaults(func=run_health)


def add_models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "models", help="list a running server's models with their state and reason",
        description="Print a running onnx-serve's repository index: each model version, its state (READY, "
        "LOADING, UNAVAILABLE...) and why it is not ready. Exit status: 0 listed, 2 server unusable.")
    add_url_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per model version and line")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the answer (default: %(default)s)")
    add_connection_arguments(parser)
    parser.set_defaults(func=run_models)


def run_health(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with open_client(args) as client:
            status = client.health(args.service)
    except (OSError, ValueError, ClientError) as exc:
        print(f"onnx-serve health: {args.url}: {_describe(exc)}", file=err)
        return EXIT_NOT_SERVING
    print(status, file=out)
    return 0 if status == "SERVING" else EXIT_NOT_SERVING


def run_models(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with open_client(args) as client:
            models = client.repository_index()
    except (OSError, ValueError, ClientError) as exc:
        print(f"onnx-serve models: {args.url}: {_describe(exc)}", file=err)
        return EXIT_UNUSABLE
    if args.json:
        for model in models:
            entry = {"name": model.name, "version": model.version, "state": model.state, "reason": model.reason}
            print(json.dumps(entry, ensure_ascii=False), file=out)
        return 0
    table = [("model", "version", "state", "reason")]
    # The reason on one line, whatever the server wrote, so that each model stays one row.
    table += [(m.name, m.version or "-", m.state, " ".join(m.reason.split())) for m in models]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for row in table:
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        print(f"{cells}  {row[3]}".rstrip(), file=out)
    return 0
