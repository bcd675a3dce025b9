"""onnx_serve.core.admission: how the data plane holds and refuses calls while the server stops."""

from __future__ import annotations

import asyncio
import time

import pytest
from onnx_serve.core.admission import Admission
from onnx_serve.core.errors import Unavailable


def test_refused_calls_are_held_until_release_then_unavailable() -> None:
    async def scenario() -> None:
        admission = Admission()
        assert await admission.finish(1.0)  # nothing active
        held = asyncio.create_task(admission.refuse())
        await asyncio.sleep(0.05)
        assert not held.done()  # held: its client is kept off the wire until the GOAWAY
        admission.release()
        with pytest.raises(Unavailable, match="shutting down"):
            await held
        with pytest.raises(Unavailable):  # after the release, refused at once
            await asyncio.wait_for(admission.refuse(), 1.0)

    asyncio.run(scenario())


def test_finish_waits_for_active_calls_within_the_timeout() -> None:
    async def scenario() -> None:
        admission = Admission()
        admission.active = 1
        asyncio.get_running_loop().call_later(0.05, admission.call_ended)
        assert await admission.finish(5.0)
        admission.active = 1
        assert not await admission.finish(0.05)  # a call that outlasts it: the caller cancels it

    asyncio.run(scenario())


def test_quiet_counts_from_the_last_end_or_refusal_not_from_nothing() -> None:
    async def scenario() -> None:
        admission = Admission()
        admission.active = 1
        asyncio.get_running_loop().call_later(0.02, admission.call_ended)
        await admission.finish(1.0)
        started = time.monotonic()
        # The call that just ended has a client whose next call is on its way: quiet waits for it.
        assert await admission.quiet(0.1, 1.0)
        assert time.monotonic() - started >= 0.09
        held = asyncio.create_task(admission.refuse())
        await asyncio.sleep(0)
        assert not await admission.quiet(0.2, 0.05)  # a refusal just now: not quiet within 50 ms
        admission.release()
        with pytest.raises(Unavailable):
            await held

    asyncio.run(scenario())
