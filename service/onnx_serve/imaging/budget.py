"""The server's budget of decoded bytes in flight: a byte semaphore shared by every concurrent Classify decode
(``--max-decoding-bytes``), so that many clients each sending images under the per-image limits still cannot
decode more at once than the server has memory for."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from onnx_serve.core.errors import ResourceExhausted

DEFAULT_WAIT_S = 1.0
"""How long a decode waits for bytes that other decodes hold before it is refused: long enough for one large
image to finish decoding (a 40 M pixel PNG takes about half a second), short enough that a client is answered
rather than queued behind a flood of them."""


class DecodingBudget:
    """Bytes that decodes in flight may hold together; ``capacity_bytes`` 0 means no limit. Thread-safe: decodes
    run in the data plane's preprocess threads. A reservation that does not fit waits up to ``wait_s`` for others
    to end, then fails with :class:`~onnx_serve.core.errors.ResourceExhausted` naming the setting; one that could
    never fit fails at once. Reservations are not queued in order: a small one goes ahead of a large one that
    waits, so ordinary images are not held up behind a bomb."""

    def __init__(self, capacity_bytes: int, wait_s: float = DEFAULT_WAIT_S) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be 0 (no limit) or more, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.wait_s = wait_s
        self._in_use_bytes = 0
        self._released = threading.Condition()

    @property
    def in_use_bytes(self) -> int:
        return self._in_use_bytes

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block."""
        if not self.capacity_bytes:
            yield
            return
        if nbytes > self.capacity_bytes:
            raise ResourceExhausted(f"decoding the image needs {nbytes} bytes, more than the server's budget of "
                                    f"{self.capacity_bytes} for all decodes (--max-decoding-bytes)")
        with self._released:
            if not self._released.wait_for(lambda: self._in_use_bytes + nbytes <= self.capacity_bytes,
                                           timeout=self.wait_s):
                raise ResourceExhausted(
                    f"server busy decoding other images: {nbytes} bytes not free within {self.wait_s:g} s "
                    f"({self._in_use_bytes} of the {self.capacity_bytes} of --max-decoding-bytes in use); retry later")
            self._in_use_bytes += nbytes
        try:
            yield
        finally:
            with self._released:
                self._in_use_bytes -= nbytes
                self._released.notify_all()
