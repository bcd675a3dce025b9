"""Exception types shared by the core and the API layer.

The core never imports grpc or HTTP, so request errors carry the *name* of their gRPC status code in
``status_name``; each edge maps the name once (edges/grpc/common.py: ``grpc.StatusCode[err.status_name]``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConfigError(ValueError):
    """A model's config.yaml (or a file it names) is invalid; the message names the file and key path."""


class ServeError(Exception):
    """Base of the errors a request can fail with; the message is safe to show to the client. Each subclass
    names its status: `class NotFound(ServeError, status="NOT_FOUND")`."""

    status_name: ClassVar[str] = "INTERNAL"

    def __init_subclass__(cls, status: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status:
            cls.status_name = status


class InvalidArgument(ServeError, status="INVALID_ARGUMENT"):
    """Malformed request: wrong dtype/shape, content size mismatch, undecodable or oversized image."""


class NotFound(ServeError, status="NOT_FOUND"):
    """Unknown model or version."""


class Unavailable(ServeError, status="UNAVAILABLE"):
    """Model loading or unloaded, server draining."""


class ResourceExhausted(ServeError, status="RESOURCE_EXHAUSTED"):
    """Queue full, message over the size limit."""


class DeadlineExceeded(ServeError, status="DEADLINE_EXCEEDED"):
    """The request's deadline passed before or during inference."""


class Internal(ServeError, status="INTERNAL"):
    """A bug: the message names only the request id; the traceback is logged, never sent."""


# A message travels back to the client in a status (gRPC: HTTP/2 trailers, percent-encoded, under grpc's
# 8 KiB metadata limit): one echoing a huge untrusted name or datatype would reach the client as
# RESOURCE_EXHAUSTED "Stream removed". Every edge bounds what it sends with this.
MAX_STATUS_MESSAGE_CHARS = 400


def bounded_message(text: str) -> str:
    if len(text) <= MAX_STATUS_MESSAGE_CHARS:
        return text
    return text[:MAX_STATUS_MESSAGE_CHARS] + "... (truncated)"
