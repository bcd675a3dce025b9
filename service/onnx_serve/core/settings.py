"""Server settings (flags, ONNX_SERVE_* variables) and the CPU budget they are sized against."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
def provider_name(name: str) -> str:
    """Accepts short names (cuda, cpu) and ONNX Runtime's full names."""
    return PROVIDER_ALIASES.get(name.strip().lower(), name.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    model_repository: Path = Path("models")
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002
    metrics_host: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = False
    grace_period_s: float = 30.0
    workers: int = 1
    execution_providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    strict_providers: bool = False
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0
    max_concurrent_streams: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_token_file: Path | None = None
    tracing: bool = False

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host


def cpu_quota() -> float:
    """CPUs this process may use: the cgroup CPU limit (v2, then v1) capped by the affinity mask.
    A container limited to 2 CPUs on a 64-core host must not start 64 ORT threads."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        try:
            quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if quota_us > 0:
                cpus = min(cpus, quota_us / period_us)
        except (OSError, ValueError):
            pass
    return max(cpus, 1.0)


def default_intra_op_threads(workers: int, instances: int) -> int:
    return max(1, math.floor(cpu_quota() / max(1, workers * instances)))


