"""Errors of the HTTP edge: core errors mapped to HTTP statuses (once, here), and the edge's own refusals
(unknown route, wrong method, body too large or too slow, bad credentials) with the same body,
`{"error": "<message>"}`, as KServe V2 and Triton answer."""

from __future__ import annotations

import json
from collections.abc import Sequence

from onnx_serve.core.errors import ServeError, bounded_message

# Triton's mapping where Triton has the code (INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503, UNIMPLEMENTED 501,
# the rest 400); DESIGN.md's for the codes Triton does not use: a full queue is 429 (retry later, here) and a
# passed deadline 504, so that clients and proxies tell them from a bad request.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAUTHENTICATED": 401,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
}

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """A refusal of the HTTP edge itself, before the data plane is reached. `close` ends the connection after
    the answer: what the client is still sending (an oversized or slow body) is then not read."""

    def __init__(self, status: int, message: str, *, close: bool = False, headers: Sequence[tuple[bytes, bytes]] = ()
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = list(headers)


def status_of(error: ServeError) -> int:
    return HTTP_STATUS.get(error.status_name, 400)


def error_body(message: str) -> bytes:
    """The JSON error object; the message is bounded as the gRPC edge bounds its status messages."""
    return json.dumps({"error": bounded_message(message)}, separators=(",", ":")).encode()
