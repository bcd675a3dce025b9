"""The model configuration schema (models/<name>/config.yaml).

Model configs are parsed strictly: an unknown key or a wrong type is a ConfigError naming the file and the
key path, raised at load so that a bad config marks only that model UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.schema import Section
from onnx_serve.core.settings import provider_name
from onnx_serve.imaging import (
    ImageLimits,
    PostprocessConfig,
    PreprocessConfig,
    parse_limits,
    parse_postprocess,
    parse_preprocess,
)

GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_SIZE = 1024


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


TOP_LEVEL_KEYS = ("name", "max_batch_size", "dynamic_batching", "oversized_request", "instance_group",
                  "version_policy", "execution_providers", "session", "labels", "preprocess", "postprocess", "limits")


def parse_model_config(raw: object, where: str, model_name: str) -> ModelConfig:
    top = Section(raw, where, "", TOP_LEVEL_KEYS)
    name = top.string("name")
    if name is not None and name != model_name:
        raise ConfigError(f"{where}: name: '{name}' differs from the model directory '{model_name}'")
    max_batch_size = top.integer("max_batch_size", 0, 0) if top.has("max_batch_size") else None
    batching: DynamicBatching | None = DynamicBatching()
    if top.raw.get("dynamic_batching") is False:
        batching = None
    elif top.has("dynamic_batching"):
        batching = _parse_batching(top.section("dynamic_batching", [f.name for f in fields(DynamicBatching)]))
    instances = top.section("instance_group", ["count"]).integer("count", 1, 1)
    providers = None
    if top.has("execution_providers"):
        listed = top.raw["execution_providers"]
        if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
            raise top.error("execution_providers", "a non-empty list of provider names")
        providers = tuple(provider_name(p) for p in listed)
    return ModelConfig(
        max_batch_size=max_batch_size,
        dynamic_batching=batching,
        oversized_request=top.choice("oversized_request", "reject", ("reject", "split")),
        instance_count=instances,
        version_policy=_parse_version_policy(top),
        execution_providers=providers,
        session=_parse_session(top.section("session", [f.name for f in fields(SessionConfig)])),
        labels=top.string("labels"),
        preprocess=parse_preprocess(top.raw["preprocess"], where) if top.has("preprocess") else None,
        postprocess=parse_postprocess(top.raw.get("postprocess"), where),
        limits=parse_limits(top.raw.get("limits"), where),
    )


def _parse_batching(section: Section) -> DynamicBatching:
    return DynamicBatching(
        max_queue_delay_microseconds=section.integer("max_queue_delay_microseconds", 0, 0),
        preferred_batch_size=tuple(sorted(set(section.integers("preferred_batch_size", 1, allow_single=True)))),
        max_queue_size=section.integer("max_queue_size", DEFAULT_MAX_QUEUE_SIZE, 0),
        default_timeout_microseconds=section.integer("default_timeout_microseconds", 0, 0),
    )


def _parse_version_policy(top: Section) -> VersionPolicy:
    section = top.section("version_policy", ["latest", "all", "specific"])
    kinds = [k for k in ("latest", "all", "specific") if k in section.raw]
    if not kinds:
        return VersionPolicy()
    if len(kinds) != 1:
        raise ConfigError(f"{top.where}: version_policy: set exactly one of latest, all, specific")
    kind = kinds[0]
    if kind == "latest":
        latest = section.section("latest", ["num_versions"])
        return VersionPolicy(kind, num_versions=latest.integer("num_versions", 1, 1))
    if kind == "all":
        section.section("all", [])
        return VersionPolicy(kind)
    specific = section.section("specific", ["versions"])
    versions = specific.integers("versions", 1)
    if not versions:
        raise specific.error("versions", "a non-empty list of version numbers")
    return VersionPolicy(kind, versions=versions)


def _parse_session(section: Section) -> SessionConfig:
    return SessionConfig(
        graph_optimization_level=section.choice("graph_optimization_level", "all", GRAPH_OPTIMIZATION_LEVELS),
        intra_op_threads=section.integer("intra_op_threads", 0, 0),
        inter_op_threads=section.integer("inter_op_threads", 0, 0),
        memory_arena=section.boolean("memory_arena", True),
        allow_spinning=section.boolean("allow_spinning", False),
    )
