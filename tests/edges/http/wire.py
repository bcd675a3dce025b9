"""Raw HTTP/1.1 for the HTTP edge's tests: what a well-behaved client library would never send (malformed
requests, lying lengths, slow bodies), over a plain socket, and the answer read back as it came."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket, head_only: bool = False) -> Answer:
    """One answer; `head_only` for a HEAD request's (its Content-Length describes a body that is not sent)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full answer; got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def exchange(port: int, raw: bytes, timeout: float = 10.0, head_only: bool = False) -> Answer:
    """Sends `raw` on a new connection and reads one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_answer(sock, head_only)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    given = {name.lower() for name in headers or {}}
    if "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def call(port: int, method: str, path: str, body: bytes | str | dict[str, Any] = b"",
         headers: dict[str, str] | None = None) -> Answer:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    return exchange(port, request_bytes(method, path, body, headers), head_only=method == "HEAD")


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF, or a reset)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
