"""Side measurements taken at the edges of each measured interval: the client's own CPU time, the server
process tree's CPU time and memory (Linux /proc, when its pid is known), and the model's ModelStatistics
(Triton semantics: cumulative nanoseconds, inference_count in samples, execution_count in batches)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc

from onnx_serve.protos.inference import grpc_service_pb2 as pb

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """Totals over the versions of one model; each duration as (count, ns)."""

    inference_count: int = 0
    execution_count: int = 0
    success: tuple[int, int] = (0, 0)
    fail: tuple[int, int] = (0, 0)
    queue: tuple[int, int] = (0, 0)
    compute_input: tuple[int, int] = (0, 0)
    compute_infer: tuple[int, int] = (0, 0)
    compute_output: tuple[int, int] = (0, 0)

    @classmethod
    def from_response(cls, response: pb.ModelStatisticsResponse) -> ModelCounters:
        totals: dict[str, Any] = {"inference_count": 0, "execution_count": 0, **{k: (0, 0) for k in _DURATIONS}}
        for stats in response.model_stats:
            totals["inference_count"] += stats.inference_count
            totals["execution_count"] += stats.execution_count
            for key in _DURATIONS:
                duration = getattr(stats.inference_stats, key)
                count, ns = totals[key]
                totals[key] = (count + duration.count, ns + duration.ns)
        return cls(**totals)

    def minus(self, earlier: ModelCounters) -> ModelCounters:
        values: dict[str, Any] = {}
        for field in fields(self):
            now, before = getattr(self, field.name), getattr(earlier, field.name)
            values[field.name] = (tuple(a - b for a, b in zip(now, before, strict=True))
                                  if isinstance(now, tuple) else now - before)
        return ModelCounters(**values)

    def breakdown(self) -> dict[str, float | int | None]:
        """Per-request averages in milliseconds and the average batch size, for a delta."""
        def avg_ms(pair: tuple[int, int]) -> float | None:
            count, ns = pair
            return round(ns / count / 1e6, 4) if count else None

        return {
            "requests": self.success[0],
            "failed": self.fail[0],
            "inferences": self.inference_count,
            "executions": self.execution_count,
            "avg_batch_size": round(self.inference_count / self.execution_count, 3) if self.execution_count else None,
            "avg_request_ms": avg_ms(self.success),
            "avg_queue_ms": avg_ms(self.queue),
            "avg_compute_input_ms": avg_ms(self.compute_input),
            "avg_compute_infer_ms": avg_ms(self.compute_infer),
            "avg_compute_output_ms": avg_ms(self.compute_output),
        }


class ServerUnavailable(RuntimeError):
    """The server went away during a run: the bench stops instead of counting refused connections as a level.
    ``levels`` are the levels measured before it went."""

    def __init__(self, message: str, levels: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.levels = levels or []


# A server that is gone answers these at once (connection refused or reset) or never (a dead host).
_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def server_unreachable(channel: grpc.aio.Channel, timeout: float = 2.0, attempts: int = 2) -> str | None:
    """Why ServerLive gets no answer (code and details), or None when the server answers. A server that sheds
    load with UNAVAILABLE still answers ServerLive, so this tells "gone" from "refusing work"; a second try a
    moment later keeps one slow answer from a loaded server from ending a run."""
    call = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                               request_serializer=pb.ServerLiveRequest.SerializeToString,
                               response_deserializer=pb.ServerLiveResponse.FromString)
    reason = None
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(0.25)
        try:
            await call(pb.ServerLiveRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _GONE:
                return None  # any answer, even an error status, comes from a live server
            reason = f"{exc.code().name}: {exc.details()}"
        else:
            return None
    return reason


class ModelStatisticsProbe:
    """Asks the server for ModelStatistics; a server without the extension (the peers) answers None."""

    def __init__(self, channel: grpc.aio.Channel, model: str, version: str = "") -> None:
        self._call = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                                         request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                                         response_deserializer=pb.ModelStatisticsResponse.FromString)
        self._request = pb.ModelStatisticsRequest(name=model, version=version)
        self.available = True
        self.unavailable_reason = ""

    async def snapshot(self) -> ModelCounters | None:
        if not self.available:
            return None
        try:
            return ModelCounters.from_response(await self._call(self._request, timeout=10))
        except grpc.aio.AioRpcError as exc:
            self.available = False
            self.unavailable_reason = f"{exc.code().name}: {exc.details()}"
            return None


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (worker processes included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    cpu_s: float
    rss_bytes: int


def process_usage(pid: int) -> ProcessUsage | None:
    """CPU seconds (user + system) and resident memory of a process tree; None when it is gone or not Linux."""
    cpu_ticks, rss_pages, seen = 0, 0, False
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        seen = True
        cpu_ticks += int(stat[11]) + int(stat[12])  # utime, stime
        rss_pages += int(stat[21])
    return ProcessUsage(cpu_ticks / _CLOCK_TICKS, rss_pages * _PAGE_BYTES) if seen else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    wall_s: float
    client_cpu_s: float
    server: ProcessUsage | None
    model: ModelCounters | None


async def take_snapshot(statistics: ModelStatisticsProbe | None, server_pid: int | None) -> Snapshot:
    model = await statistics.snapshot() if statistics else None
    server = process_usage(server_pid) if server_pid else None
    return Snapshot(time.perf_counter(), time.process_time(), server, model)
