"""`onnx-serve classify`: classify image files on a running server and print the top predictions.

Exit status: 0 when every image was classified, 1 when some image failed (each failure is one line on
stderr; the other images are still printed), 2 when the server cannot be used at all (unreachable,
unknown model, bad token, deadline) or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from onnx_serve.client.client import DEFAULT_MODEL, DEFAULT_URL, Client, ClientError, Prediction

EXIT_IMAGE_FAILED = 1
EXIT_UNUSABLE = 2
# Failures that every other image would meet too: stop at the first one.
FATAL_CODES = {"UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "UNIMPLEMENTED",
               "DEADLINE_EXCEEDED", "CANCELLED"}
_ONLY_IMAGE = re.compile(r"^image 0: ")  # each request holds one image, so its index tells nothing


def add_classify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "classify", help="classify image files on a running server",
        description="Classify image files (JPEG, PNG, BMP, GIF, WebP, TIFF) with a model on a running onnx-serve "
        "and print each one's top predictions. Exit status: 0 all classified, 1 some image failed, 2 server "
        "unusable (unreachable, unknown model, rejected token).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=Path, help="image files")
    add_url_argument(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--model-version", default="", help="model version (default: the latest ready one)")
    parser.add_argument("--top-k", type=_positive_int, default=None,
                        help="predictions per image (default: the model's configured top_k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image and line")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for all the answers")
    add_connection_arguments(parser)
    parser.set_defaults(func=run_classify)


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("ONNX_SERVE_URL", DEFAULT_URL),
                        help="server address: HOST:PORT, https://HOST:PORT or dns:///NAME:PORT "
                        "(default: %(default)s) [env ONNX_SERVE_URL]")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The token and TLS options every command that talks to a server takes (read by open_client)."""
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token (first non-blank line)")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA bundle to verify the server with (turns TLS on)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--tls-server-name", help="name to expect in the server's certificate")


def open_client(args: argparse.Namespace) -> Client:
    """The Client of --url, --timeout and the connection options; OSError/ValueError for a file that cannot be
    read or options that do not go together."""
    return Client(args.url, tls=args.tls or None, root_certificates=args.tls_ca, client_cert=args.tls_cert,
                  client_key=args.tls_key, tls_server_name=args.tls_server_name,
                  token=_read_token(args.token_file) if args.token_file else None, timeout=args.timeout)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_classify(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        client = open_client(args)
    except (OSError, ValueError) as exc:
        print(f"onnx-serve classify: {_describe(exc)}", file=err)
        return EXIT_UNUSABLE
    failed = 0
    with client:
        try:
            for result in client.classify_stream(([path] for path in args.images), args.model, args.top_k,
                                                 args.model_version, ordered=True):
                path = args.images[result.index]
                if result.error is None:
                    assert result.predictions is not None
                    _print_result(out, str(path), args.model, result.predictions[0], args.json)
                    continue
                if _fails_every_image(result.error):
                    raise result.error
                failed += 1
                print(f"onnx-serve classify: {path}: {_describe(result.error, with_filename=False)}", file=err)
        except ClientError as exc:
            print(f"onnx-serve classify: {args.url}: {_describe(exc)}", file=err)
            return EXIT_UNUSABLE
        except BrokenPipeError:  # the reader left (`... | head -1`): stop quietly, as other tools do
            if out is sys.stdout:  # so the interpreter's last flush at exit cannot fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_IMAGE_FAILED
        except KeyboardInterrupt:
            return 130
    return EXIT_IMAGE_FAILED if failed else 0


def _fails_every_image(error: Exception) -> bool:
    """Errors about the server, the model or the request rather than this image (the server prefixes those
    with "image N: "), which every other image would meet too."""
    if not isinstance(error, ClientError):
        return False
    return error.code in FATAL_CODES or (error.code == "INVALID_ARGUMENT" and not _ONLY_IMAGE.match(error.message))


def _read_token(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()
    raise ValueError(f"{path}: holds no token")


def _describe(exc: BaseException, with_filename: bool = True) -> str:
    if isinstance(exc, ClientError):
        message = " ".join(_ONLY_IMAGE.sub("", exc.message).split())  # one line, whatever the server sent
        return f"{message} ({exc.code})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename and with_filename else exc.strerror
    return str(exc)


def _score(score: float) -> float:
    """The shortest decimal that reads back as the same float32 the server sent (0.99, not 0.9900000095)."""
    return float(str(np.float32(score)))


def _print_result(out: TextIO, image: str, model: str, top: list[Prediction], as_json: bool) -> None:
    if as_json:
        rows = [{"label": p.label, "index": p.index, "score": _score(p.score)} for p in top]
        print(json.dumps({"image": image, "model": model, "top": rows}, ensure_ascii=False), file=out, flush=True)
        return
    table = [("rank", "score", "index", "label")]
    # 4 significant digits, so that the scores below the top keep their size (7.200e-12, not 0.000000).
    table += [(str(rank), f"{p.score:#.4g}", str(p.index), p.label) for rank, p in enumerate(top, start=1)]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    print(image, file=out)
    for row in table:
        numbers = "  ".join(cell.rjust(width) for cell, width in zip(row[:3], widths, strict=True))
        print(f"  {numbers}  {row[3]}", file=out)
    out.flush()
