"""The adversarial soak (scripts/soak.py --adversarial): normal clients on a quiet server first, then the same
clients while every attack of tests/helpers/attacks.py repeats beside them, from a process of its own (sharing
the normal clients' event loop, the attackers' work would count as the server's latency).

Reports the server's peak RSS (VmHWM over the whole run), normal requests lost (any answer but OK), attack
outcomes that broke a promise (not in the attack's expected set), and the normal clients' p99 under attack
against the quiet p99."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from PIL import Image, ImageDraw

from tests.helpers.attacks import Attacks, Target, digits_request


def _digit_png(rng: random.Random) -> bytes:
    image = Image.new("L", (64, 64), 255)
    x = rng.randint(20, 40)
    ImageDraw.Draw(image).line([(x, 10), (x + rng.randint(-4, 4), 54)], fill=0, width=rng.randint(5, 9))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3 if ordered else 0.0


@dataclass
class Adversarial:
    target: Target
    pid: int
    window_s: float
    normal: Counter[str] = field(default_factory=Counter)  # "infer OK", "classify UNAVAILABLE", ...
    attacks: Counter[tuple[str, str, bool]] = field(default_factory=Counter)  # (attack, outcome, expected)
    latencies: list[float] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, quiet_s: float, attack_s: float, clients: int) -> dict[str, Any]:
        rng = random.Random(0)
        pngs = [_digit_png(rng) for _ in range(16)]
        async with grpc.aio.insecure_channel(self.target.url) as channel:
            quiet_until = time.monotonic() + quiet_s
            stop_at = quiet_until + attack_s
            normal = [asyncio.create_task(self._normal(channel, pngs, stop_at)) for _ in range(clients)]
            await self._report_until(quiet_until, "quiet")
            quiet_p99 = _p99([latency for window in self.windows for latency in window.pop("_latencies")])
            receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
            attacker = multiprocessing.get_context("spawn").Process(
                target=attack_process, args=(self.target, stop_at - time.monotonic(), sender), name="attacker")
            attacker.start()
            await self._report_until(stop_at, "attack")
            await asyncio.gather(*normal)
            report = receiver.recv() if receiver.poll(120) else [(("attacker", "NO REPORT", False), 1)]
            attacker.join(30)
            for (name, outcome, ok), n in report:
                self.attacks[(name, outcome, ok)] += n
        attacked = [latency for window in self.windows for latency in window.pop("_latencies", [])]
        attack_p99 = _p99(attacked)
        lost = sum(n for what, n in self.normal.items() if not what.endswith(" OK"))
        unexpected = {f"{name}: {outcome}": n for (name, outcome, ok), n in self.attacks.items() if not ok}
        return {
            "quiet_s": quiet_s, "attack_s": attack_s, "normal_clients": clients,
            "normal": dict(self.normal), "lost": lost,
            "attacks": {f"{name}: {outcome}": n for (name, outcome, _), n in sorted(self.attacks.items())},
            "unexpected": unexpected,
            "peak_rss_mib": round(status_kib(self.pid, "VmHWM") / 1024, 1),
            "quiet_p99_ms": round(quiet_p99, 2), "attack_p99_ms": round(attack_p99, 2),
            "p99_ratio": round(attack_p99 / quiet_p99, 2) if quiet_p99 else None,
            "windows": self.windows,
        }

    async def _normal(self, channel: grpc.aio.Channel, pngs: list[bytes], stop_at: float) -> None:
        """A well-behaved client: ModelInfer of one digit and Classify of one PNG, in turn, as fast as answered."""
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        classifier = classify_pb2_grpc.ImageClassifierStub(channel)
        infer = digits_request(self.target.model)
        turn = 0
        while time.monotonic() < stop_at:
            turn += 1
            if turn % 2:
                kind, call = "infer", v2.ModelInfer(infer, timeout=30)
            else:
                request = classify_pb2.ClassifyRequest(model_name=self.target.model,
                                                       images=[classify_pb2.Image(encoded=pngs[turn % len(pngs)])])
                kind, call = "classify", classifier.Classify(request, timeout=30)
            started = time.perf_counter()
            try:
                await call
                code = "OK"
                self.latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            self.normal[f"{kind} {code}"] += 1

    async def _report_until(self, until: float, phase: str) -> None:
        started = time.monotonic()
        while (now := time.monotonic()) < until:
            await asyncio.sleep(min(self.window_s, until - now))
            latencies, self.latencies = self.latencies, []
            window = {"phase": phase, "t_s": round(time.monotonic() - started, 1), "ok": len(latencies),
                      "p99_ms": round(_p99(latencies), 2), "rss_mib": round(status_kib(self.pid, "VmRSS") / 1024, 1),
                      "peak_rss_mib": round(status_kib(self.pid, "VmHWM") / 1024, 1)}
            print(json.dumps(window), flush=True)
            self.windows.append({**window, "_latencies": latencies})


def attack_process(target: Target, duration_s: float, report: Any) -> None:
    """The attackers' process: every attack of the table, each in a loop with a short pause, for `duration_s`;
    sends [((attack, outcome, expected), count), ...] back through `report`."""
    counts: Counter[tuple[str, str, bool]] = Counter()
    # On this 2-core machine the attackers share the server's CPUs; a real attacker's CPU is its own. At the
    # lowest priority they take only what the server and the normal clients leave, so the p99 measures the
    # server's defences, not this client's CPU use.
    os.nice(19)

    async def attack_for() -> None:
        stop_at = time.monotonic() + duration_s
        async with grpc.aio.insecure_channel(target.url) as channel:
            attacks = Attacks(target, channel)

            async def repeat(name: str, attack: Any, expected: frozenset[str]) -> None:
                rng = random.Random(name)
                while time.monotonic() < stop_at:
                    try:
                        outcome = await asyncio.wait_for(attack(), 90)
                    except TimeoutError:
                        outcome = "ATTACK TIMED OUT"
                    except OSError as error:
                        outcome = f"CLIENT {type(error).__name__}"
                    counts[(name, outcome, outcome in expected)] += 1
                    await asyncio.sleep(rng.uniform(0.2, 1.0))

            await asyncio.gather(*(repeat(name, attack, expected)
                                   for name, (attack, expected) in attacks.table().items()))

    try:
        asyncio.run(attack_for())
    finally:
        report.send(list(counts.items()))

