"""The requests of the HTTP edge's benchmark and one closed-loop load point of them, driven by nghttp2's C client
`h2load` (HTTP/1.1 with --h1, gRPC as HTTP/2 POSTs), so one client drives every protocol and eats little of a
2-core machine. Each point reports h2load's req/s and latency percentiles (its per-request log) and the server's
CPU per request (/proc, the server process and its descendants) over the measured window."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.onnxserve.v1 import classify_pb2
from PIL import Image, ImageDraw

INPUT_SHAPE = (1, 1, 28, 28)
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_CLASSIFY = "/onnxserve.v1.ImageClassifier/Classify"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Request:
    """One request, sent again and again: where it goes (an HTTP path, or a gRPC method) and its exact bytes."""

    kind: str  # "h1" (HTTP/1.1) or "grpc" (HTTP/2, gRPC framing)
    path: str
    body: bytes
    headers: tuple[str, ...]


def _pixels() -> np.ndarray:
    return np.random.default_rng(7).random(INPUT_SHAPE, dtype=np.float32)


def binary_infer(model: str) -> Request:
    """Triton's binary tensor extension, byte for byte what tritonclient.http sends by default (JSON header, then
    the raw tensor; outputs asked back as binary)."""
    pixels = _pixels()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(INPUT_SHAPE), "datatype": "FP32",
                                     "parameters": {"binary_data_size": pixels.nbytes}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    return Request("h1", f"/v2/models/{model}/infer", header + pixels.tobytes(),
                   ("content-type: application/octet-stream", f"inference-header-content-length: {len(header)}"))


def json_infer(model: str) -> Request:
    """The plain KServe V2 REST request: the tensor as a JSON list of 784 numbers, the answer in JSON too."""
    data = [round(float(x), 6) for x in _pixels().ravel()]
    # an id: KServe's REST answer model refuses a response without one (HTTP 500), and every server echoes it
    body = json.dumps({"id": "1", "inputs": [{"name": "input", "shape": list(INPUT_SHAPE), "datatype": "FP32",
                                   "data": data}]}, separators=(",", ":")).encode()
    return Request("h1", f"/v2/models/{model}/infer", body, ("content-type: application/json",))


def _grpc(path: str, message: bytes) -> Request:
    return Request("grpc", path, b"\x00" + len(message).to_bytes(4, "big") + message,
                   ("content-type: application/grpc", "te: trailers"))


def grpc_infer(model: str) -> Request:
    request = pb.ModelInferRequest(model_name=model, inputs=[
        pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(INPUT_SHAPE))])
    request.raw_input_contents.append(_pixels().tobytes())
    return _grpc(GRPC_INFER, request.SerializeToString())


def digit_png() -> bytes:
    """A 28x28 hand-drawn-looking 7, dark ink on white (the usual photo), as PNG: what a Classify client sends."""
    image = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(image).line([(6, 6), (21, 6), (12, 23)], fill=0, width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def http_classify(model: str) -> Request:
    return Request("h1", f"/v2/models/{model}/classify", digit_png(), ("content-type: image/png",))


def grpc_classify(model: str) -> Request:
    request = classify_pb2.ClassifyRequest(model_name=model, images=[classify_pb2.Image(encoded=digit_png())])
    return _grpc(GRPC_CLASSIFY, request.SerializeToString())


def check_http(base_url: str, request: Request) -> None:
    """One request with the exact bytes h2load will send: it must answer 200 (h2load only counts statuses)."""
    headers = dict(h.split(": ", 1) for h in request.headers)
    http = urllib.request.Request(base_url + request.path, data=request.body, headers=headers, method="POST")
    with urllib.request.urlopen(http, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{request.path}: HTTP {response.status}")
        response.read()


def check_grpc(target: str, request: Request) -> None:
    """A gRPC error also comes as HTTP 200 (in the grpc-status trailer h2load does not read): call it once."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        call: Any = channel.unary_unary(request.path)  # bytes in, bytes out
        call(request.body[5:], timeout=30)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its live descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_mib(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_point(request: Request, host_port: str, concurrency: int, server_pid: int, seconds: float,
              warmup: float) -> dict[str, Any]:
    """One closed-loop point: `concurrency` requests in flight (HTTP/1.1: that many connections; gRPC: 4
    connections with concurrency/4 streams each, as one gRPC client with a few channels would), for `seconds`
    after `warmup` seconds that are not measured."""
    if request.kind == "h1":
        shape = ["--h1", "-c", str(concurrency), "-m", "1"]
    else:
        connections = min(4, concurrency)
        shape = ["-c", str(connections), "-m", str(concurrency // connections)]
    with tempfile.TemporaryDirectory(prefix="httpbench-") as work:
        body, log = Path(work) / "body", Path(work) / "log"
        body.write_bytes(request.body)
        command = ["h2load", *shape, "-t", "1", "-D", f"{int(seconds * 1000)}ms",
                   f"--warm-up-time={int(warmup * 1000)}ms", "-d", str(body), f"--log-file={log}"]
        for header in request.headers:
            command += ["-H", header]
        command.append(f"http://{host_port}{request.path}")
        # the server's CPU is read over the measured window only (h2load's warm-up is not measured either)
        h2load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(warmup + 0.2)
        cpu_before, started = cpu_seconds(server_pid), time.monotonic()
        time.sleep(max(0.5, seconds - 0.4))
        cpu_used, wall = cpu_seconds(server_pid) - cpu_before, time.monotonic() - started
        output, _ = h2load.communicate(timeout=seconds + warmup + 60)
        done = subprocess.CompletedProcess(command, h2load.returncode, output, "")
        out = done.stdout + done.stderr
        finished, counts, statuses = _FINISHED.search(out), _REQUESTS.search(out), _STATUS.search(out)
        if done.returncode != 0 or not (finished and counts and statuses):
            raise RuntimeError(f"h2load failed ({done.returncode}): {' '.join(command)}\n{out[-2000:]}")
        latencies = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    succeeded, failed = int(counts.group(4)), int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7))
    non_2xx = sum(int(statuses.group(i)) for i in (2, 3, 4))
    return {
        "req_s": float(finished.group(3)),
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "succeeded": succeeded, "failed": failed, "non_2xx": non_2xx,
        "server_cpu_us_per_req": round(cpu_used / max(1e-9, float(finished.group(3)) * wall) * 1e6, 1),
        "server_cores": round(cpu_used / wall, 2), "server_rss_mib": round(rss_mib(server_pid), 1),
        "connections_x_streams": f"{shape[-3]}x{shape[-1]}",
    }


def _percentile(sorted_us: list[int], q: float) -> float:
    if not sorted_us:
        return 0.0
    return round(sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))] / 1000, 3)
