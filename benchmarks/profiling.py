"""Samples a running server with py-spy (when it is installed) and boils the samples down to where each
thread spends its time, for docs/benchmarks.md. py-spy is a developer tool, not a dependency: without it
the profile step is skipped."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# Frames that are only plumbing around the code that does the work.
_PLUMBING = ("<module>", "_run_code", "_run_module_as_main", "run (asyncio/runners.py", "Runner.run",
             "run_until_complete", "run_forever", "_run_once", "Handle._run", "Thread._bootstrap",
             "Thread.run (threading.py", "main (onnx_serve/cli", "serve (onnx_serve/cli",
             "run_server (onnx_serve/workers", "sweep (onnx_serve/bench/cli", "run_bench (onnx_serve/bench/cli",
             "asyncio/runners.py")


def py_spy() -> str | None:
    """py-spy on PATH or next to this interpreter (a venv that is not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def start_recording(pid: int, seconds: int, out: Path, rate: int = 250) -> subprocess.Popen[bytes] | None:
    """Starts py-spy sampling every thread of `pid` for `seconds` into `out` (raw collapsed stacks); None when
    py-spy is missing. It needs ptrace permission: without it, `out` is never written."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
                             "--format", "raw", "--output", str(out), "--nonblocking", "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Share of samples per thread, and per frame (self and inclusive) within the busiest thread."""
    by_thread: collections.Counter[str] = collections.Counter()
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].strip()
        by_thread[_thread_kind(thread)] += int(samples)
        stacks.append((frames, int(samples)))
    total = sum(by_thread.values())
    if not total:
        return {"samples": 0, "threads": {}, "self": [], "inclusive": []}
    main = "MainThread"
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    main_total = 0
    for frames, count in stacks:
        if main not in frames[0]:
            continue
        main_total += count
        self_time[frames[-1]] += count
        for frame in set(frames[1:]):
            if not any(plumbing in frame for plumbing in _PLUMBING):
                inclusive[frame] += count
    share = 100.0 / max(main_total, 1)
    return {
        "samples": total,
        "threads": {name: round(100.0 * n / total, 1) for name, n in by_thread.most_common()},
        "self": [(frame, round(n * share, 1)) for frame, n in self_time.most_common(top)],
        "inclusive": [(frame, round(n * share, 1)) for frame, n in inclusive.most_common(top)],
    }


def _thread_kind(name: str) -> str:
    """Threads by role: 'ort-mnist-cnn-1_0' -> 'ONNX Runtime runner', the grpc poller, the event loop..."""
    if name.startswith("ort-"):
        return "ONNX Runtime runner threads"
    if "_poll_wrapper" in name:
        return "gRPC poller thread"
    if name == "MainThread":
        return "MainThread (asyncio event loop)"
    if name.startswith(("preprocess", "asyncio_")):
        return "worker threads (preprocess / default executor)"
    return "other threads"
