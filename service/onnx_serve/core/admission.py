"""Which calls the data plane takes while the server stops, so that a drain loses none.

grpc core cancels (CANCELLED, not a retryable status) every call that it has received but not yet handed to a
handler when its server shuts down, and every call that arrives on a connection between its GOAWAY and the
client's reading of it. A closed-loop client always has its next call on the wire, so answering refused calls
at once would leave each client's next call to be cancelled at the shutdown. Instead, once refusing, a new call
is *held*: when every client's call is held and none arrives any more, the edges shut down (GOAWAY, no more
connections), and only then are the held calls answered UNAVAILABLE; a client that retries reconnects elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import NoReturn

from onnx_serve.core.errors import Unavailable

SHUTTING_DOWN = "the server is shutting down: send the request to another replica"


class Admission:
    def __init__(self) -> None:
        self.refusing = False
        self.active = 0  # calls being served (held ones are not)
        self._idle: asyncio.Event | None = None  # set when the last active call ends, while finish() waits
        self._release: asyncio.Event | None = None  # set when held calls may be answered
        self._last_activity = 0.0  # time.monotonic() of the latest refusal, or end of a call, since refusing

    def call_ended(self) -> None:
        self.active -= 1
        if self.refusing:  # its client's next call is on its way
            self._last_activity = time.monotonic()
        if not self.active and self._idle is not None:
            self._idle.set()

    async def refuse(self) -> NoReturn:
        """Holds a new call until release(), then refuses it UNAVAILABLE."""
        self._last_activity = time.monotonic()
        if self._release is not None:
            await self._release.wait()
        raise Unavailable(SHUTTING_DOWN)

    async def finish(self, timeout_s: float) -> bool:
        """Starts refusing new calls and waits up to `timeout_s` for the active ones to end; True when none is
        left."""
        self.refusing = True
        self._last_activity = time.monotonic()
        if self._release is None:
            self._release = asyncio.Event()
        if not self.active:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None

    async def quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Waits until, for `quiet_s`, no call has been refused and none has ended (every closed-loop client's
        call is held), at most `timeout_s`; True when it got quiet."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            since = now - self._last_activity
            if since >= quiet_s:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_s - since, deadline - now))

    def release(self) -> None:
        """Answers the held calls, and from now on every new one at once (UNAVAILABLE)."""
        self.refusing = True
        if self._release is None:
            self._release = asyncio.Event()
        self._release.set()
