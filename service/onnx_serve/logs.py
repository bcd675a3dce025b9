"""Logging: plain text or one JSON object per line; the access log (one line per request) is opt-in."""

from __future__ import annotations

import json
import logging
import sys
import time

ROOT_LOGGER = "onnx_serve"
ACCESS_LOGGER = "onnx_serve.access"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str, access_log: bool) -> None:
    """Configures the `onnx_serve` loggers only: an application that embeds the server keeps its own root
    logger, handlers and levels."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger(ROOT_LOGGER)
    ours.handlers[:] = [handler]
    ours.setLevel(level.upper())
    ours.propagate = False  # our lines are written once, by our handler, whatever the root logger does
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.WARNING)
