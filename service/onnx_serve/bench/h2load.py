"""`onnx-serve bench --driver h2load`: the load comes from nghttp2's h2load, a C HTTP/2 client, so that on a small
machine the client does not take the server's CPU (Triton's perf_analyzer is C++ for the same reason).

A unary gRPC call is an HTTP/2 POST of one length-prefixed message (a 0 flag byte, a 4-byte big-endian length,
the serialized request) with `content-type: application/grpc` and `te: trailers`. h2load posts that body file
again and again on C connections with M streams each: a point CxM keeps C*M requests in flight.

h2load counts HTTP statuses, and a gRPC error is an HTTP 200 whose status is in the trailers, which h2load does
not read. So before the first point the very bytes of the body are sent once through grpcio (refused, with the
server's own code and message, unless OK) and once through h2load (-n 1: it must get a 2xx the server counts as
a success); and after each point the model's ModelStatistics are diffed: an HTTP 200 the server did not count
as a success is an error (GRPC_NOT_OK), never a request. h2load abandons the requests still in flight when its
time is up, so the server may count up to C*M successes more than h2load did.

h2load neither fails nor stops when the server goes away (it waits out its duration having sent nothing), so
ServerLive is asked every window while it runs; a server that no longer answers ends the run
(ServerUnavailable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from onnx_serve.bench.load import LevelPlan, LevelRun, is_stable
from onnx_serve.bench.probe import (
    ModelCounters,
    ModelStatisticsProbe,
    ServerUnavailable,
    Snapshot,
    process_usage,
    server_unreachable,
)
from onnx_serve.bench.report import summarize
from onnx_serve.bench.workload import Workload

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
PACKAGE = "nghttp2-client"  # Debian's and Ubuntu's package with /usr/bin/h2load
SETTLE_S = 0.2  # after h2load exits, the server answers or cancels what it abandoned before its counters are read
_SUMMARY = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout")
_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s)\b")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_REQUEST_TIME = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class H2loadMissing(RuntimeError):
    """No h2load binary where --h2load points."""


class BodyRefused(RuntimeError):
    """The request the run would send does not get an OK answer: h2load would count its errors as successes."""


class Point(NamedTuple):
    connections: int
    streams: int  # concurrent streams per connection

    @property
    def label(self) -> str:
        return f"{self.connections}x{self.streams}"

    @property
    def in_flight(self) -> int:
        return self.connections * self.streams


def parse_points(text: str) -> list[Point]:
    """`4x32,1x8` -> [Point(4, 32), Point(1, 8)]; an argparse type."""
    points = []
    for part in (p.strip().lower() for p in text.split(",")):
        connections, sep, streams = part.partition("x")
        if not (sep and connections.isdigit() and streams.isdigit() and int(connections) > 0 and int(streams) > 0):
            raise argparse.ArgumentTypeError(f"expected CONNECTIONSxSTREAMS points such as 4x32,1x8, got {text!r}")
        points.append(Point(int(connections), int(streams)))
    return points


def find_h2load(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise H2loadMissing(f"h2load not found ({path!r}): --driver h2load needs nghttp2's h2load; on Debian or "
                            f"Ubuntu install the package {PACKAGE} (apt-get install {PACKAGE}), or point --h2load "
                            "at the binary")
    return found


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: not compressed (0), its length (4 bytes, big-endian), its bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_command(exe: str, url: str, body: Path, point: Point, threads: int, *, duration_s: float = 0.0,
                   requests: int = 0, log: Path | None = None) -> list[str]:
    amount = ["-n", str(requests)] if requests else ["-D", f"{max(1, round(duration_s * 1000))}ms"]
    command = [exe, *amount, "-c", str(point.connections), "-m", str(point.streams),
               "-t", str(max(1, min(threads, point.connections))), "-d", str(body)]
    for header in GRPC_HEADERS:
        command += ["-H", header]
    return [*command, *(["--log-file", str(log)] if log else []), url]


@dataclass(slots=True)
class H2loadResult:
    returncode: int
    stdout: str
    stderr: str
    finished_s: float | None = None
    requests: dict[str, int] = field(default_factory=dict)  # total, started, done, succeeded, failed, errored, timeout
    status_codes: dict[str, int] = field(default_factory=dict)
    request_time_ms: dict[str, float] = field(default_factory=dict)  # h2load's own min, max, mean, sd

    @classmethod
    def parse(cls, returncode: int, stdout: str, stderr: str) -> H2loadResult:
        result = cls(returncode, stdout, stderr)
        if finished := _FINISHED.search(stdout):
            result.finished_s = float(finished.group(1)) * _UNIT_MS[finished.group(2)] / 1e3
        if summary := _SUMMARY.search(stdout):
            keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
            result.requests = dict(zip(keys, map(int, summary.groups()), strict=True))
        if status := _STATUS.search(stdout):
            result.status_codes = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, status.groups()), strict=True))
        if request_time := _REQUEST_TIME.search(stdout):
            with contextlib.suppress(ValueError):
                result.request_time_ms = {key: round(_to_ms(value), 3) for key, value in
                                          zip(("min", "max", "mean", "sd"), request_time.groups(), strict=True)}
        return result

    def describe(self) -> str:
        """What went wrong, for a message: its exit status and the last of what it printed."""
        said = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        return f"h2load exited {self.returncode}: " + (" / ".join(said) or "no output")


def _to_ms(value: str) -> float:
    number = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not number:
        raise ValueError(value)
    return float(number.group(1)) * _UNIT_MS[number.group(2)]


def read_log(path: Path, window_s: float, windows: int) -> tuple[list[float], list[int]]:
    """h2load's --log-file (start in µs since the epoch, HTTP status, µs to the end of the answer): the latencies
    of the HTTP 200 answers in seconds, and how many of them ended in each window from the first start on."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1], int(parts[2])))
    if not rows:
        return [], [0] * windows
    origin = min(start for start, _, _ in rows)
    counts = [0] * windows
    latencies = []
    for start, status, micros in rows:
        if status != "200":
            continue
        latencies.append(micros / 1e6)
        index = int((start + micros - origin) / 1e6 / window_s)
        if index < windows:
            counts[index] += 1
    return latencies, counts


def _children_cpu_s() -> float:
    """CPU time of our finished children: h2load, once reaped (asyncio waits for it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class H2loadDriver:
    """One run's h2load, body file and server probes; :meth:`sweep` measures the points."""

    exe: str
    url: str  # http://HOST:PORT/package.Service/Method
    workload: Workload
    channel: grpc.aio.Channel  # for ServerLive, and for the body check through grpcio
    statistics: ModelStatisticsProbe
    plan: LevelPlan
    threads: int = 1
    server_pid: int | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="onnx-serve-h2load-")))
    body: bytes = b""

    def __post_init__(self) -> None:
        self.body = grpc_frame(self.workload.payload())
        (self.workdir / "body.bin").write_bytes(self.body)

    @property
    def body_path(self) -> Path:
        return self.workdir / "body.bin"

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        version = subprocess.run([self.exe, "--version"], capture_output=True, text=True, check=False).stdout
        return {"path": self.exe, "version": version.strip(), "threads": self.threads, "url": self.url,
                "headers": list(GRPC_HEADERS), "body_bytes": len(self.body)}

    async def check_body(self) -> None:
        """Refuses (BodyRefused) a body that does not get an OK answer; see the module's docstring."""
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            self.workload.method, request_serializer=None, response_deserializer=None)
        try:
            await call(self.body[5:], timeout=30)  # the body's message bytes, as they are
        except grpc.aio.AioRpcError as exc:
            raise BodyRefused(f"the request gets {exc.code().name} ({exc.details()}), not OK: h2load counts a gRPC "
                              "error as an HTTP 200 success, so nothing is measured; fix the request (--model, "
                              "--shape, --input, --batch-size) first") from None
        before = await self.statistics.snapshot()
        result = await self._h2load(h2load_command(self.exe, self.url, self.body_path, Point(1, 1), 1, requests=1),
                                    "the check")
        if result.requests.get("succeeded") != 1:
            raise BodyRefused(f"h2load could not send the request to {self.url}: {result.describe()}")
        await asyncio.sleep(SETTLE_S)
        after = await self.statistics.snapshot()
        if before and after and after.minus(before).success[0] < 1:
            raise BodyRefused("h2load's request got an HTTP answer, but the server counted no successful request "
                              f"for {self.workload.request.model_name!r}: its grpc-status is not OK")

    async def sweep(self, points: Sequence[Point], levels: list[dict[str, Any]], progress: Callable[[str], None],
                    window: Callable[[int, float], None] | None = None) -> None:
        """Measures each point and appends its summary to ``levels``; ``window`` is told each window's server-side
        rate of successes (one more ModelStatistics call a window: only for a progress bar that shows)."""
        for point in points:
            progress(point.label)
            levels.append(await self.measure(point, window))

    async def measure(self, point: Point, window: Callable[[int, float], None] | None = None) -> dict[str, Any]:
        plan = self.plan
        if plan.warmup_s > 0:
            await self._h2load(self._command(point, plan.warmup_s), f"{point.label} warm-up")
            await asyncio.sleep(SETTLE_S)  # the warm-up's abandoned requests end before the counters are read
        log = self.workdir / f"{point.label}.tsv"
        model_before = await self.statistics.snapshot()
        before = self._usage(model_before)
        result = await self._h2load(self._command(point, plan.duration_s, log), point.label, window)
        end = self._usage(None)
        await asyncio.sleep(SETTLE_S)
        after = Snapshot(end.wall_s, end.client_cpu_s, end.server, await self.statistics.snapshot())
        if result.finished_s is None or not result.requests:
            raise RuntimeError(f"h2load did not run the point {point.label}: {result.describe()}")
        if not result.requests["done"]:
            await self._raise_if_gone(f"h2load completed no request at {point.label}")
            raise RuntimeError(f"h2load completed no request in {result.finished_s:.1f} s at {point.label} "
                               f"(though the server answers ServerLive): {result.describe()}")
        return self._summary(point, result, log, before, after)

    def _summary(self, point: Point, result: H2loadResult, log: Path, before: Snapshot,
                 after: Snapshot) -> dict[str, Any]:
        window_s = self.plan.effective_window_s
        assert result.finished_s is not None
        windows = max(1, round(result.finished_s / window_s))
        latencies, counts = read_log(log, window_s, windows) if log.exists() else ([], [0] * windows)
        succeeded = result.requests["succeeded"]
        server_ok = _successes(before.model, after.model)
        not_ok = max(0, succeeded - server_ok) if server_ok is not None else 0
        errors = Counter({"HTTP_FAILED": result.requests["failed"], "GRPC_NOT_OK": not_ok})
        run = LevelRun(point.in_flight, 0.0, result.finished_s, window_s, counts,
                       is_stable([count / window_s for count in counts]), latencies, +errors, before, after)
        summary = summarize(run, self.workload.items_per_request, succeeded - not_ok)
        if not latencies and result.request_time_ms:  # no per-request log: h2load's own figures
            summary["latency_ms"].update(mean=result.request_time_ms["mean"], max=result.request_time_ms["max"])
        summary.update(driver="h2load", point=point.label, connections=point.connections, streams=point.streams,
                       h2load={"requests": result.requests, "status_codes": result.status_codes,
                               "request_time_ms": result.request_time_ms, "finished_s": result.finished_s,
                               "returncode": result.returncode})
        return summary

    def _command(self, point: Point, seconds: float, log: Path | None = None) -> list[str]:
        return h2load_command(self.exe, self.url, self.body_path, point, self.threads, duration_s=seconds, log=log)

    def _usage(self, model: ModelCounters | None) -> Snapshot:
        """Client CPU is ours plus h2load's (finished children); server CPU and RSS when its pid is known."""
        server = process_usage(self.server_pid) if self.server_pid else None
        return Snapshot(time.perf_counter(), time.process_time() + _children_cpu_s(), server, model)

    async def _raise_if_gone(self, what: str) -> None:
        reason = await server_unreachable(self.channel)
        if reason is not None:
            raise ServerUnavailable(f"server unavailable: {what}: ServerLive fails ({reason})")

    async def _h2load(self, command: list[str], stage: str,
                      window: Callable[[int, float], None] | None = None) -> H2loadResult:
        """Runs h2load; every window while it runs, checks that the server still answers (and reports the server's
        own rate of successes, when it has statistics). A server that is gone stops h2load."""
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        output = asyncio.ensure_future(process.communicate())
        try:
            done, last = 0, await self.statistics.snapshot() if window else None
            window_s = self.plan.effective_window_s
            while not (await asyncio.wait({output}, timeout=window_s))[0]:
                await self._raise_if_gone(f"while h2load ran ({stage})")
                done += 1
                if window:
                    now = await self.statistics.snapshot()
                    window(done, (_successes(last, now) or 0) / window_s)
                    last = now
            stdout, stderr = output.result()
        finally:
            if process.returncode is None:
                process.kill()
                with contextlib.suppress(ProcessLookupError, asyncio.CancelledError):
                    await output
        return H2loadResult.parse(process.returncode or 0, stdout.decode(errors="replace"),
                                  stderr.decode(errors="replace"))


def _successes(before: ModelCounters | None, after: ModelCounters | None) -> int | None:
    return after.minus(before).success[0] if before and after else None


def notes(statistics: ModelStatisticsProbe) -> list[str]:
    if statistics.available:
        return []
    return [f"the server has no ModelStatistics ({statistics.unavailable_reason}): h2load's HTTP 200 answers are "
            "counted as successes unchecked (a gRPC error is an HTTP 200 too); only the check before the first "
            "point vouches for the request"]
