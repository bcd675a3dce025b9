"""Bounded soak test: sustained mixed traffic against a real onnx-serve on 127.0.0.1, bad requests included.

    python scripts/soak.py --duration 600 [--concurrency 8] [--models models] [--json soak.json]
    python scripts/soak.py --adversarial --duration 600 [--concurrency 4] [--json soak.json]

Starts `onnx-serve` on free ports with the given repository (the bundled one by default), then keeps
`--concurrency` requests in flight for `--duration` seconds, mixing V2 ModelInfer (good and malformed),
Classify (good PNGs and undecodable bytes) and unknown-model requests. Every minute (or --window) it
prints throughput, latency percentiles of the good requests, and the server's RSS; at the end it reports
error counts by status and whether each matched what was expected, RSS at start and end, and exits 1 on
any unexpected status or RSS growth above --max-rss-growth (5 % by default).

With --adversarial (scripts/adversarial.py), the first tenth (at most a minute) is normal clients alone, and the
rest adds every attack of the adversarial suite (tests/helpers/attacks.py: pixel, gzip, unfinished-message,
header-flood and never-read stream bombs, a stalled Health Watch, duplicated outputs, unknown names, cancelled
calls, bad shapes) beside them; it reports peak RSS, lost normal requests, unexpected attack outcomes and the
normal clients' p99 against the quiet one, and exits 1 on a lost request, an unexpected outcome or a peak RSS
above --max-peak-rss-mib (512).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from onnx_serve.bench.launch import start_server
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from onnx_serve.protos.onnxserve.v1 import classify_pb2, classify_pb2_grpc
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.helpers: the attacks are the adversarial test suite's own


def digit_png(rng: random.Random) -> bytes:
    image = Image.new("L", (64, 64), 255)
    draw = ImageDraw.Draw(image)
    x = rng.randint(20, 40)
    draw.line([(x, 10), (x + rng.randint(-4, 4), 54)], fill=0, width=rng.randint(5, 9))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def infer_request(model: str, shape: list[int], good: bool) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    tensor_shape = shape if good else [*shape[:-1], shape[-1] + 1]
    message.inputs.add(name="input", datatype="FP32", shape=tensor_shape)
    data = np.random.rand(*shape).astype(np.float32).tobytes()
    message.raw_input_contents.append(data)
    return message


class Soak:
    def __init__(self, url: str, model: str, window_s: float) -> None:
        self.url, self.model, self.window_s = url, model, window_s
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (kind, expected, got)
        self.latencies: list[float] = []

    async def run(self, duration_s: float, concurrency: int, rss: callable) -> list[dict[str, float]]:  # type: ignore[valid-type]
        rng = random.Random(0)
        pngs = [digit_png(rng) for _ in range(32)]
        good_infer = infer_request(self.model, [1, 1, 28, 28], True)
        bad_infer = infer_request(self.model, [1, 1, 28, 28], False)
        unknown = pb.ModelInferRequest(model_name="no-such-model")
        windows: list[dict[str, float]] = []
        async with grpc.aio.insecure_channel(self.url) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            classifier = classify_pb2_grpc.ImageClassifierStub(channel)
            stop = time.monotonic() + duration_s

            async def one() -> None:
                roll = rng.random()
                if roll < 0.55:
                    kind, expected, call = "infer", "OK", v2.ModelInfer(good_infer, timeout=10)
                elif roll < 0.85:
                    image = classify_pb2.Image(encoded=rng.choice(pngs))
                    kind, expected = "classify", "OK"
                    call = classifier.Classify(classify_pb2.ClassifyRequest(model_name=self.model, images=[image]),
                                               timeout=10)
                elif roll < 0.92:
                    kind, expected, call = "bad-shape", "INVALID_ARGUMENT", v2.ModelInfer(bad_infer, timeout=10)
                elif roll < 0.97:
                    image = classify_pb2.Image(encoded=rng.randbytes(200))
                    kind, expected = "bad-image", "INVALID_ARGUMENT"
                    call = classifier.Classify(classify_pb2.ClassifyRequest(model_name=self.model, images=[image]),
                                               timeout=10)
                else:
                    kind, expected, call = "unknown-model", "NOT_FOUND", v2.ModelInfer(unknown, timeout=10)
                start = time.perf_counter()
                try:
                    await call
                    got = "OK"
                except grpc.aio.AioRpcError as error:
                    got = error.code().name
                if expected == "OK" and got == "OK":
                    self.latencies.append(time.perf_counter() - start)
                self.outcomes[(kind, expected, got)] += 1

            async def worker() -> None:
                while time.monotonic() < stop:
                    await one()

            async def report() -> None:
                start = last = time.monotonic()
                while time.monotonic() < stop:
                    await asyncio.sleep(min(self.window_s, max(stop - time.monotonic(), 0.01)))
                    now = time.monotonic()
                    lat, self.latencies = sorted(self.latencies), []
                    total = sum(self.outcomes.values())
                    window = {"t_s": round(now - start, 1), "requests": total,
                              "good_per_s": round(len(lat) / (now - last), 1), "rss_mib": round(rss() / 1024, 1)}
                    last = now
                    if lat:
                        window.update(p50_ms=round(lat[len(lat) // 2] * 1e3, 2),
                                      p99_ms=round(lat[int(len(lat) * 0.99)] * 1e3, 2),
                                      max_ms=round(lat[-1] * 1e3, 2))
                    windows.append(window)
                    print(json.dumps(window), flush=True)

            await asyncio.gather(report(), *(worker() for _ in range(concurrency)))
        return windows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--adversarial", action="store_true", help="mix the adversarial suite's attacks in")
    parser.add_argument("--max-peak-rss-mib", type=float, default=512)
    args = parser.parse_args()
    if args.adversarial:
        return adversarial_soak(args)

    server = start_server(args.models)

    def rss() -> int:
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    try:
        soak = Soak(server.url, args.model, args.window)
        asyncio.run(soak.run(min(5.0, args.duration), args.concurrency, rss))  # warm-up, not counted
        soak.outcomes.clear()
        rss_start = rss()
        windows = asyncio.run(soak.run(args.duration, args.concurrency, rss))
        rss_end = rss()
    finally:
        exit_code = server.stop()
    unexpected = {f"{k}: expected {e}, got {g}": n for (k, e, g), n in soak.outcomes.items() if e != g}
    growth = (rss_end - rss_start) / rss_start
    summary = {
        "duration_s": args.duration, "concurrency": args.concurrency,
        "requests": sum(soak.outcomes.values()),
        "by_kind": {f"{k} -> {g}": n for (k, _, g), n in sorted(soak.outcomes.items())},
        "unexpected": unexpected, "rss_start_mib": round(rss_start / 1024, 1), "rss_end_mib": round(rss_end / 1024, 1),
        "rss_growth_pct": round(100 * growth, 2), "server_exit_code": exit_code,
        "p50_ms_median_of_windows": statistics.median(w["p50_ms"] for w in windows if "p50_ms" in w),
        "windows": windows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "windows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    ok = not unexpected and growth <= args.max_rss_growth and exit_code == 0
    return 0 if ok else 1


def adversarial_soak(args: argparse.Namespace) -> int:
    from adversarial import Adversarial

    from tests.helpers.attacks import Target

    server = start_server(args.models)
    try:
        quiet = min(60.0, args.duration / 10)
        run = Adversarial(Target(server.url, server.grpc_port, args.model), server.process.pid, min(args.window, 30))
        summary = asyncio.run(run.run(quiet, args.duration - quiet, args.concurrency))
    finally:
        summary_exit = server.stop()
    summary["server_exit_code"] = summary_exit
    print(json.dumps({k: v for k, v in summary.items() if k != "windows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    ok = not summary["lost"] and not summary["unexpected"] and summary["peak_rss_mib"] < args.max_peak_rss_mib
    return 0 if ok and summary_exit == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
