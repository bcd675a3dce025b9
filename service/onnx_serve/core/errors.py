"""Exception types shared by the core and the API layer.

The core never imports grpc, so request errors carry the *name* of their gRPC status code in
``status_name``; the API layer maps it with ``grpc.StatusCode[err.status_name]``.
"""

from __future__ import annotations

from typing import ClassVar


class ConfigError(ValueError):
    """A model's config.yaml (or a file it names) is invalid; the message names the file and key path."""


class ServeError(Exception):
    """Base of the errors a request can fail with; the message is safe to show to the client."""

    status_name: ClassVar[str] = "INTERNAL"


class InvalidArgument(ServeError):
    """Malformed request: wrong dtype/shape, content size mismatch, undecodable or oversized image."""

    status_name: ClassVar[str] = "INVALID_ARGUMENT"


class NotFound(ServeError):
    """Unknown model or version."""

    status_name: ClassVar[str] = "NOT_FOUND"


class Unavailable(ServeError):
    """Model loading or unloaded, server draining."""

    status_name: ClassVar[str] = "UNAVAILABLE"


class ResourceExhausted(ServeError):
    """Queue full, message over the size limit."""

    status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServeError):
    """The request's deadline passed before or during inference."""

    status_name: ClassVar[str] = "DEADLINE_EXCEEDED"


class Internal(ServeError):
    """A bug: the message names only the request id; the traceback is logged, never sent."""

    status_name: ClassVar[str] = "INTERNAL"


# A message travels back to the client in a status (gRPC: HTTP/2 trailers, percent-encoded, under grpc's
# 8 KiB metadata limit): one echoing a huge untrusted name or datatype would reach the client as
# RESOURCE_EXHAUSTED "Stream removed". Every edge bounds what it sends with this.
MAX_STATUS_MESSAGE_CHARS = 400


def bounded_message(text: str) -> str:
    if len(text) <= MAX_STATUS_MESSAGE_CHARS:
        return text
    return text[:MAX_STATUS_MESSAGE_CHARS] + "... (truncated)"
