"""What every edge shares: the error for a port it cannot bind, and the bearer-token file."""

from __future__ import annotations

import socket
from pathlib import Path

from onnx_serve.core.settings import SettingError


class PortUnavailable(OSError):
    """An edge's address cannot be bound: in use, or not an address of this machine."""


def read_tokens(path: Path) -> list[bytes]:
    """One token per line, stripped; blank lines and comment lines (first non-blank character #) are skipped.
    Raises SettingError (one line naming the file) for a file that cannot be read or holds no token."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not UTF-8 text"
        raise SettingError(f"--auth-token-file {path}: cannot read it: {reason}") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [token for token in tokens if token and not token.startswith("#")]
    if not tokens:
        raise SettingError(f"--auth-token-file {path}: holds no token (only blank or # comment lines)")
    return [token.encode() for token in tokens]


def bind_socket(host: str, port: int, reuse_port: bool, what: str) -> socket.socket:
    """A bound (not yet listening) TCP socket; PortUnavailable (naming `what`, e.g. "HTTP") when the address is in
    use or not this machine's. With `reuse_port`, every worker of --workers binds the same port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PortUnavailable(f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from None
    return sock
