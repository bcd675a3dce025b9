"""Where an FP32 or INT8 model spends its time: ONNX Runtime's own per-node profile, summed per kernel type,
with the server's session settings (intra-op threads sized to the CPU quota, spinning off)."""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx_serve.core.settings import default_intra_op_threads


def ort_op_profile(path: Path, batch_size: int, runs: int) -> dict[str, Any]:
    """Milliseconds per run by kernel type (ORT's names after its fusions: QLinearConv, FusedConv, ...)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_intra_op_threads(1, 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = [batch_size, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
        feeds = {spec.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        session.run(None, feeds)  # the first run allocates; profiled runs follow
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_op[op] += event["dur"]
            if event["name"] not in seen:
                seen.add(event["name"])
                nodes[op] += 1
    scale = 1e3 * (runs + 1)  # microseconds over every run (the first included) -> milliseconds per run
    return {"batch_size": batch_size, "runs": runs + 1, "intra_op_threads": options.intra_op_num_threads,
            "total_ms": round(sum(per_op.values()) / scale, 3),
            "ops": {op: {"ms": round(us / scale, 3), "nodes": nodes[op]} for op, us in per_op.most_common()}}


def paired_speed(fp32: Path, int8: Path, batch_size: int, seconds: float) -> dict[str, Any]:
    """FP32 and INT8 run by run in turns for about `seconds`, with the server's session settings; the median run of
    each. On a machine whose speed drifts with other load, pairing runs this finely keeps the ratio honest where
    seconds-long blocks (bench --raw) swing with whatever else ran in that block."""
    import time

    from onnx_serve.core.model_config import SessionConfig
    from onnx_serve.core.runtime import SessionPlan, create_session

    plan = SessionPlan(providers=("CPUExecutionProvider",), strict_providers=False, options=SessionConfig(),
                       intra_op_threads=default_intra_op_threads(1, 1))
    sessions = [create_session(path, plan)[0] for path in (fp32, int8)]
    spec = sessions[0].get_inputs()[0]
    shape = [batch_size, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
    feeds = {spec.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    for session in sessions:
        session.run(None, feeds)
    times: list[list[float]] = [[], []]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times[0]) < 5:
        for index in (0, 1) if len(times[0]) % 2 == 0 else (1, 0):
            start = time.perf_counter()
            sessions[index].run(None, feeds)
            times[index].append(time.perf_counter() - start)
    fp32_s, int8_s = (float(np.median(t)) for t in times)
    return {"batch_size": batch_size, "pairs": len(times[0]), "fp32_images_per_s": round(batch_size / fp32_s, 2),
            "int8_images_per_s": round(batch_size / int8_s, 2), "speedup": round(fp32_s / int8_s, 3)}
