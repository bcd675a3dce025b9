"""The load generator: keeps exactly C requests in flight with grpc.aio and measures in windows.

Unary APIs run C coroutines, each sending its next request as soon as the previous one is answered; the
stream APIs keep C requests in flight on one bidirectional stream per channel, matching answers to
requests by id. A level is stable when the last three windows' throughputs are each within 10% of their
mean (perf_analyzer's rule); an unstable level is measured for a few more windows before it is reported
as unstable.

A server that goes away mid-run stops the level (ServerUnavailable) instead of being measured: a watchdog
looks at each half second's outcomes, and when UNAVAILABLE answered nearly all of them (or nothing at all
completed for a while) asks ServerLive; only when that fails too is the server gone. A sender that gets
UNAVAILABLE backs off (1 ms, doubling to 100 ms) rather than spinning on a refused connection.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc

from onnx_serve.bench.probe import ServerUnavailable, Snapshot, server_unreachable
from onnx_serve.bench.workload import Workload

STABILITY_WINDOWS = 3
STABILITY_TOLERANCE = 0.10
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),  # each channel its own TCP connection (SO_REUSEPORT spreads those)
]
WATCH_INTERVAL_S = 0.5
UNAVAILABLE_SHARE = 0.9  # of an interval's outcomes: below it, a server shedding load is still being measured
STALL_S = 2.0  # no outcome at all for this long also asks ServerLive (a hung connection fails nothing)
BACKOFF_S = (0.001, 0.1)  # first and longest pause after UNAVAILABLE, per sender


@dataclass(frozen=True, slots=True)
class LevelPlan:
    warmup_s: float
    duration_s: float
    window_s: float
    max_extra_windows: int = 3
    timeout_s: float | None = None

    @property
    def windows(self) -> int:
        return max(STABILITY_WINDOWS, math.ceil(self.duration_s / self.window_s - 1e-9))

    @property
    def effective_window_s(self) -> float:
        """Short runs shrink the window so that at least three fit."""
        return min(self.window_s, self.duration_s / STABILITY_WINDOWS)


@dataclass(slots=True)
class Recorder:
    """Completion times are appended in completion order, so `ends` is sorted and windows are bisections."""

    ends: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    error_ends: list[float] = field(default_factory=list)
    error_codes: list[str] = field(default_factory=list)

    def failed(self, end: float, code: str) -> None:
        self.error_ends.append(end)
        self.error_codes.append(code)

    def completed_between(self, start: float, end: float) -> int:
        return bisect.bisect_left(self.ends, end) - bisect.bisect_left(self.ends, start)


@dataclass(slots=True)
class LevelRun:
    """What one concurrency level measured, before summarizing."""

    concurrency: int
    start: float
    end: float
    window_s: float
    window_counts: list[int]
    stable: bool
    latencies_s: list[float]
    errors: Counter[str]
    before: Snapshot
    after: Snapshot

    @property
    def wall_s(self) -> float:
        return self.end - self.start


def is_stable(throughputs: Sequence[float]) -> bool:
    if len(throughputs) < STABILITY_WINDOWS:
        return False
    last = throughputs[-STABILITY_WINDOWS:]
    mean = sum(last) / len(last)
    return mean > 0 and all(abs(value - mean) <= STABILITY_TOLERANCE * mean for value in last)


def open_channels(url: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(url, options=[*CHANNEL_OPTIONS, ("onnx-serve.bench.channel", index)])
            for index in range(count)]


Progress = Callable[[int, float], None]  # (windows done, last window's requests/s)


class LoadGenerator:
    def __init__(self, channels: Sequence[grpc.aio.Channel], workload: Workload, codec: str = "bytes") -> None:
        if codec not in ("bytes", "proto"):
            raise ValueError(f"unknown codec {codec!r}")
        self.channels = list(channels)
        self.workload = workload
        self.codec = codec
        self._payload = workload.payload()

    async def run_level(self, concurrency: int, plan: LevelPlan, snapshot: Callable[[], Awaitable[Snapshot]],
                        progress: Progress | None = None) -> LevelRun:
        recorder, stop = Recorder(), asyncio.Event()
        tasks = [asyncio.create_task(coroutine) for coroutine in self._senders(concurrency, plan, recorder, stop)]
        watchdog = asyncio.create_task(self._watch(recorder))
        watched = [*tasks, watchdog]
        try:
            await self._sleep_watching(plan.warmup_s, watched)
            before = await snapshot()
            start, window = time.perf_counter(), plan.effective_window_s
            counts: list[int] = []
            while True:
                boundary = start + (len(counts) + 1) * window
                await self._sleep_watching(boundary - time.perf_counter(), watched)
                counts.append(recorder.completed_between(boundary - window, boundary))
                if progress:
                    progress(len(counts), counts[-1] / window)
                stable = is_stable([c / window for c in counts])
                if len(counts) >= plan.windows and (stable or len(counts) >= plan.windows + plan.max_extra_windows):
                    break
            end = start + len(counts) * window
            after = await snapshot()
        finally:
            watchdog.cancel()
            stop.set()
            await self._drain(tasks, plan)
            with contextlib.suppress(asyncio.CancelledError, ServerUnavailable):
                await watchdog
        low, high = bisect.bisect_left(recorder.ends, start), bisect.bisect_left(recorder.ends, end)
        errors = Counter(code for t, code in zip(recorder.error_ends, recorder.error_codes, strict=True)
                         if start <= t < end)
        return LevelRun(concurrency, start, end, window, counts, stable, recorder.latencies[low:high], errors,
                        before, after)

    @staticmethod
    async def _sleep_watching(seconds: float, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Sleeps, but surfaces a sender's crash at once instead of measuring a dead level."""
        if seconds > 0:
            done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()

    async def _watch(self, recorder: Recorder) -> None:
        """Raises ServerUnavailable when the server is gone (see the module's docstring); runs until cancelled."""
        clock = time.perf_counter
        seen_ok = seen_failed = 0
        last_outcome = clock()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            ok, failed = len(recorder.ends), len(recorder.error_codes)
            outcomes = ok - seen_ok + failed - seen_failed
            unavailable = recorder.error_codes[seen_failed:failed].count("UNAVAILABLE")
            seen_ok, seen_failed = ok, failed
            now = clock()
            if outcomes:
                last_outcome = now
            refused = unavailable > 0 and unavailable >= UNAVAILABLE_SHARE * outcomes
            if not refused and now - last_outcome < STALL_S:
                continue
            reason = await server_unreachable(self.channels[0])
            if reason is not None:
                seen = (f"in the last {WATCH_INTERVAL_S:g} s {unavailable:,} of {outcomes:,} requests failed "
                        "UNAVAILABLE" if refused else f"no request completed for {now - last_outcome:.1f} s")
                raise ServerUnavailable(f"server unavailable: {seen}, and ServerLive fails too ({reason})")
            last_outcome = clock()  # alive: a slow model, or one shedding load; look again after STALL_S

    @staticmethod
    async def _drain(tasks: Sequence[asyncio.Task[None]], plan: LevelPlan) -> None:
        _, pending = await asyncio.wait(tasks, timeout=max(10.0, 2 * (plan.timeout_s or 0)))
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task

    def _senders(self, concurrency: int, plan: LevelPlan, recorder: Recorder, stop: asyncio.Event) -> list:
        if not self.workload.streaming:
            return [self._unary(self.channels[i % len(self.channels)], plan.timeout_s, recorder, stop)
                    for i in range(concurrency)]
        shares = [concurrency // len(self.channels) + (i < concurrency % len(self.channels))
                  for i in range(len(self.channels))]
        return [self._stream(channel, share, recorder, stop) for channel, share in zip(self.channels, shares,
                                                                                        strict=True) if share]

    async def _unary(self, channel: grpc.aio.Channel, timeout: float | None, recorder: Recorder,
                     stop: asyncio.Event) -> None:
        if self.codec == "bytes":  # the same pre-serialized bytes every time; the answer is not parsed
            call: grpc.aio.UnaryUnaryMultiCallable[object, object] = channel.unary_unary(
                self.workload.method, request_serializer=None, response_deserializer=None)
            request = self._payload
        else:
            call = channel.unary_unary(self.workload.method,
                                       request_serializer=type(self.workload.request).SerializeToString,
                                       response_deserializer=self.workload.response_type.FromString)
            request = self.workload.message()
        clock, ends, latencies = time.perf_counter, recorder.ends, recorder.latencies
        backoff = 0.0
        while not stop.is_set():
            sent = clock()
            try:
                await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                recorder.failed(clock(), exc.code().name)
                if exc.code() is grpc.StatusCode.UNAVAILABLE:  # a refused connection fails at once: do not spin
                    backoff = min(BACKOFF_S[1], 2 * backoff or BACKOFF_S[0])
                    await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            done = clock()
            ends.append(done)
            latencies.append(done - sent)

    async def _stream(self, channel: grpc.aio.Channel, in_flight: int, recorder: Recorder,
                      stop: asyncio.Event) -> None:
        payloads = [self.workload.payload(str(slot)) for slot in range(in_flight)]
        parse = self.workload.stream_parser()
        clock = time.perf_counter
        while not stop.is_set():
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
                self.workload.method, request_serializer=None, response_deserializer=None)()
            sent = [0.0] * in_flight
            outstanding = in_flight
            try:
                for slot, payload in enumerate(payloads):
                    sent[slot] = clock()
                    await call.write(payload)
                while outstanding:
                    answer = await call.read()
                    if answer is grpc.aio.EOF:
                        break
                    done = clock()
                    request_id, error = parse(cast(bytes, answer))  # no deserializer: the raw message
                    if not request_id.isdigit() or int(request_id) >= in_flight:
                        raise RuntimeError(f"the server answered a stream request with id {request_id!r}, not the "
                                           "id it was sent: cannot match answers to requests")
                    slot = int(request_id)
                    if error:
                        recorder.failed(done, error)
                    else:
                        recorder.ends.append(done)
                        recorder.latencies.append(done - sent[slot])
                    if stop.is_set():
                        outstanding -= 1
                    else:
                        sent[slot] = clock()
                        await call.write(payloads[slot])
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                end = clock()
                for _ in range(outstanding):
                    recorder.failed(end, exc.code().name)
                await asyncio.sleep(0.05)  # a broken stream is reopened, not hammered
