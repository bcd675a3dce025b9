"""Server settings and the model configuration schema (models/<name>/config.yaml).

Model configs are parsed strictly: an unknown key or a wrong type is a ConfigError naming the file and the
key path, raised at load so that a bad config marks only that model UNAVAILABLE.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.errors import ConfigError
from service.preprocess import (
    ImageLimits,
    PostprocessConfig,
    PreprocessConfig,
    parse_limits,
    parse_postprocess,
    parse_preprocess,
)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_SIZE = 1024


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
    model_control: bool = True

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


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # 0 = unbounded, as in Triton
    default_timeout_microseconds: int = 0  # 0 = no server-side timeout


@dataclass(frozen=True, slots=True)
class SessionConfig:
    graph_optimization_level: str = "all"
    intra_op_threads: int = 0  # 0 = the server's setting, else sized to the CPU quota
    inter_op_threads: int = 0
    memory_arena: bool = True
    allow_spinning: bool = False


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    max_batch_size: int | None = None  # None = decided from the graph (batch axis -> 64, else 0)
    # On (with no added delay) unless the config says `dynamic_batching: false`; it only applies to models
    # with a batch axis.
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    oversized_request: str = "reject"  # reject | split
    instance_count: int = 1
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    execution_providers: tuple[str, ...] | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    labels: str | None = None
    preprocess: PreprocessConfig | None = None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    limits: ImageLimits = field(default_factory=ImageLimits)


class _Section:
    """Reads one mapping of a config file strictly, remembering which keys were consumed."""

    def __init__(self, raw: object, path: str, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: {path or 'the file'} must be a mapping, got {type(raw).__name__}")
        self.raw, self.path, self.where = raw, path, where
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(name)
        if name not in self.raw or self.raw[name] is None:
            return default
        value = self.raw[name]
        # bool is an int in Python; a YAML `true` where a number belongs is a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{self.where}: {self.key(name)}: expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.where}: {self.key(name)}: expected {_kind_name(kind)}, got {value!r}")
        return value

    def int(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.get(name, int, default)
        if value < minimum:
            raise ConfigError(f"{self.where}: {self.key(name)}: must be >= {minimum}, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(f"{self.where}: {self.key(name)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, name: str) -> _Section | None:
        self.seen.add(name)
        if self.raw.get(name) is None:
            return None
        return _Section(self.raw[name], self.key(name), self.where)

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.raw if k not in self.seen)
        if unknown:
            where = f" in {self.path}" if self.path else ""
            raise ConfigError(f"{self.where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"int": "an integer", "str": "a string", "bool": "true or false", "list": "a list", "dict": "a mapping"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)


def load_model_config(path: Path) -> ModelConfig:
    """Reads models/<name>/config.yaml; a missing file means every setting comes from the graph."""
    if not path.exists():
        return ModelConfig()
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    return parse_model_config(raw, where, model_name=path.parent.name)


def parse_model_config(raw: object, where: str, model_name: str) -> ModelConfig:
    top = _Section(raw, "", where)
    name = top.get("name", str)
    if name is not None and name != model_name:
        raise ConfigError(f"{where}: name: '{name}' differs from the model directory '{model_name}'")
    max_batch_size = top.get("max_batch_size", int)
    if max_batch_size is not None and max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size: must be >= 0, got {max_batch_size}")
    batching: DynamicBatching | None = DynamicBatching()
    if top.raw.get("dynamic_batching", True) is False:
        top.seen.add("dynamic_batching")
        batching = None
    elif (section := top.section("dynamic_batching")) is not None:
        batching = _parse_batching(section)
    oversized = top.choice("oversized_request", ("reject", "split"), "reject")
    instances = 1
    if (group := top.section("instance_group")) is not None:
        instances = group.int("count", 1, minimum=1)
        group.finish()
    providers = top.get("execution_providers", list)
    if providers is not None:
        if not providers or not all(isinstance(p, str) for p in providers):
            raise ConfigError(f"{where}: execution_providers: expected a non-empty list of provider names")
        providers = tuple(provider_name(p) for p in providers)
    config = ModelConfig(
        max_batch_size=max_batch_size,
        dynamic_batching=batching,
        oversized_request=oversized,
        instance_count=instances,
        version_policy=_parse_version_policy(top.section("version_policy")),
        execution_providers=providers,
        session=_parse_session(top.section("session")),
        labels=top.get("labels", str),
        preprocess=parse_preprocess(top.raw["preprocess"], where) if top.raw.get("preprocess") else None,
        postprocess=parse_postprocess(top.raw.get("postprocess") or {}, where),
        limits=parse_limits(top.raw.get("limits") or {}, where),
    )
    top.seen.update({"preprocess", "postprocess", "limits"})
    top.finish()
    return config


def _parse_batching(section: _Section) -> DynamicBatching:
    preferred = section.get("preferred_batch_size", (list, int), [])
    preferred = [preferred] if isinstance(preferred, int) else preferred
    if not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in preferred):
        raise ConfigError(f"{section.where}: {section.key('preferred_batch_size')}: expected positive integers")
    batching = DynamicBatching(
        max_queue_delay_microseconds=section.int("max_queue_delay_microseconds", 0),
        preferred_batch_size=tuple(sorted(set(preferred))),
        max_queue_size=section.int("max_queue_size", DEFAULT_MAX_QUEUE_SIZE),
        default_timeout_microseconds=section.int("default_timeout_microseconds", 0),
    )
    section.finish()
    return batching


def _parse_version_policy(section: _Section | None) -> VersionPolicy:
    if section is None:
        return VersionPolicy()
    kinds = [k for k in ("latest", "all", "specific") if k in section.raw]
    if len(kinds) != 1:
        raise ConfigError(f"{section.where}: version_policy: set exactly one of latest, all, specific")
    kind = kinds[0]
    inner = section.section(kind) or _Section({}, section.key(kind), section.where)
    policy = VersionPolicy(kind=kind)
    if kind == "latest":
        policy = VersionPolicy(kind=kind, num_versions=inner.int("num_versions", 1, minimum=1))
    elif kind == "specific":
        versions = inner.get("versions", list, [])
        if not versions or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions):
            raise ConfigError(f"{section.where}: version_policy.specific.versions: expected positive integers")
        policy = VersionPolicy(kind=kind, versions=tuple(versions))
    inner.finish()
    section.finish()
    return policy


def _parse_session(section: _Section | None) -> SessionConfig:
    if section is None:
        return SessionConfig()
    session = SessionConfig(
        graph_optimization_level=section.choice("graph_optimization_level", GRAPH_OPTIMIZATION_LEVELS, "all"),
        intra_op_threads=section.int("intra_op_threads", 0),
        inter_op_threads=section.int("inter_op_threads", 0),
        memory_arena=section.get("memory_arena", bool, True),
        allow_spinning=section.get("allow_spinning", bool, False),
    )
    section.finish()
    return session
