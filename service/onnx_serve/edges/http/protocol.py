"""uvicorn's httptools protocol with the bounds it lacks on what a client sends before the app sees a request:
the size of the request head (request line and headers), and the time the head may take (a client that opens
a connection and trickles bytes, or sends nothing, would otherwise hold it forever). Refusals are answered
with the JSON error body and the connection closed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from onnx_serve.edges.http.errors import error_body

log = logging.getLogger("onnx_serve.edges.http")
MAX_HEAD_BYTES = 32 * 1024  # request line and headers; Node's and most proxies' limits are 8-16 KiB per line


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools then stops parsing and raises HttpParserCallbackError."""


class BoundedHttpProtocol(HttpToolsProtocol):
    head_timeout_s: float = 30.0  # set per server: the class is handed to uvicorn's Config

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = log  # uvicorn's own lines (an app that fails) go to our logger, with our format
        self._reading_head = True
        self._head_bytes = 0  # received since this request's head began: bounds a head still incomplete
        self._parsed_head_bytes = 0  # parsed into the URL and headers: bounds a head that came whole in one read
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._head_too_large:
                self.refuse(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
            else:
                self.refuse(400, f"malformed HTTP request: {exc}")
            return
        except httptools.HttpParserUpgrade:  # no protocol to upgrade to: served as a plain request
            log.debug("ignored an Upgrade request")
        if self._reading_head and self._head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0  # the next request's head, timed once it starts

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, msg)

    def refuse(self, status: int, message: str) -> None:
        """Answers a request the app never saw, and closes the connection."""
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = error_body(message)
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self._head_bytes:
            self.refuse(408, f"the request head did not arrive within {self.head_timeout_s:g}s")
        else:  # a connection that never sent a byte is just closed
            self.transport.close()


def protocol_class(head_timeout_s: float) -> type[BoundedHttpProtocol]:
    """The protocol with this server's head timeout (uvicorn instantiates the class it is given)."""
    return type("HttpProtocol", (BoundedHttpProtocol,), {"head_timeout_s": head_timeout_s})
