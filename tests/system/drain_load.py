"""Closed-loop ModelInfer clients against a server process that gets SIGTERM while they run: what each call
that started before the signal, and each one after it, ended with. The drain tests and their 10-run check use it.

    python -m tests.system.drain_load --runs 10 --clients 16 [--workers 2]   # the acceptance figure
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc

from tests.helpers.serving import BUNDLED_MODELS, ServerProcess, start_server


@dataclass
class DrainOutcome:
    signalled_at: float = 0.0  # time.monotonic() just before the signal
    exited_after_s: float = 0.0  # from the signal to the process's exit
    exit_code: int | None = None
    before: Counter[str] = field(default_factory=Counter)  # codes of calls started before the signal
    after: Counter[str] = field(default_factory=Counter)  # codes of calls started after it

    @property
    def lost(self) -> int:
        """Calls that reached the server before the signal (they started before it) and did not end OK."""
        return sum(count for code, count in self.before.items() if code != "OK")

    @property
    def unexpected_after(self) -> Counter[str]:
        return Counter({code: n for code, n in self.after.items() if code not in ("OK", "UNAVAILABLE")})


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist-cnn")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.random.default_rng(0).random((1, 1, 28, 28), np.float32).tobytes())
    return request


async def _client(url: str, outcome: DrainOutcome, stop_at: float) -> None:
    request = _request()
    async with grpc.aio.insecure_channel(url) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await infer(request, timeout=20)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            signalled = outcome.signalled_at
            (outcome.before if not signalled or started < signalled else outcome.after)[code] += 1
            if code == "UNAVAILABLE" and signalled:
                await asyncio.sleep(0.01)  # as a client's retry policy would, instead of spinning


async def _drive(server: ServerProcess, clients: int, signal_after_s: float, limit_s: float) -> DrainOutcome:
    outcome = DrainOutcome()
    stop_at = time.monotonic() + limit_s
    tasks = [asyncio.create_task(_client(server.url, outcome, stop_at)) for _ in range(clients)]
    await asyncio.sleep(signal_after_s)
    outcome.signalled_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    while server.process.poll() is None and time.monotonic() < stop_at:
        await asyncio.sleep(0.005)
    outcome.exited_after_s = time.monotonic() - outcome.signalled_at
    outcome.exit_code = server.process.poll()
    await asyncio.sleep(0.2)  # a few calls after the exit: they must be UNAVAILABLE too
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return outcome


def sigterm_under_load(*server_args: str, clients: int = 16, signal_after_s: float = 1.0,
                       limit_s: float = 40.0, repository: Path = BUNDLED_MODELS) -> tuple[DrainOutcome, ServerProcess]:
    """Starts a server on `repository` with `server_args`, runs `clients` closed-loop clients, sends SIGTERM after
    `signal_after_s`, and returns what the calls ended with once the process has exited (or `limit_s` passed)."""
    server = start_server(repository, *server_args)
    try:
        outcome = asyncio.run(_drive(server, clients, signal_after_s, limit_s))
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
    return outcome, server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--drain-delay", default="1")
    parser.add_argument("--grace-period", default="10")
    args = parser.parse_args()
    failed = 0
    for run in range(args.runs):
        delay = ("--drain-delay", args.drain_delay) if args.drain_delay else ()
        outcome, _ = sigterm_under_load("--workers", str(args.workers), *delay, "--grace-period", args.grace_period,
                                        clients=args.clients)
        bad = outcome.lost or outcome.unexpected_after or outcome.exit_code != 0
        failed += bool(bad)
        print(f"run {run + 1}: exit {outcome.exit_code} after {outcome.exited_after_s:.2f}s; before the signal "
              f"{dict(outcome.before)}; after it {dict(outcome.after)}; lost {outcome.lost}"
              + ("  <-- FAILED" if bad else ""))
    print(f"{args.runs - failed}/{args.runs} runs lost nothing and answered only OK or UNAVAILABLE afterwards")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
