"""The model configuration schema (models/<name>/config.yaml), and the dataclasses that Triton's config.pbtxt
maps onto too (core/triton_config.py).

Model configs are parsed strictly: an unknown key or a wrong type is a ConfigError naming the file and the
key path, raised at load so that a bad config marks only that model UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.schema import Section, is_int
from onnx_serve.core.settings import SettingError, provider_list
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
MODEL_FILENAME = "model.onnx"
WARMUP_SOURCES = ("zero_data", "random_data", "input_data_file")
# Triton's data_type names <-> V2 datatype names (TYPE_STRING is BYTES).
TRITON_TYPES = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_UINT16": "UINT16", "TYPE_UINT32": "UINT32",
                "TYPE_UINT64": "UINT64", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16", "TYPE_INT32": "INT32",
                "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_FP64": "FP64",
                "TYPE_STRING": "BYTES"}


def triton_type(datatype: str) -> str:
    """Triton's data_type name of a V2 datatype name."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


TIMEOUT_ACTIONS = ("REJECT", "DELAY")


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy: how one priority level's queue treats its requests."""

    max_queue_size: int = 0  # 0 = unbounded, as in Triton
    default_timeout_microseconds: int = 0  # time a request may wait in the queue; 0 = no limit
    allow_timeout_override: bool = False  # a request's `timeout` parameter may shorten it
    timeout_action: str = "REJECT"  # REJECT: answered UNAVAILABLE; DELAY: served after the others of its level


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    # The default queue policy (Triton's default_queue_policy), flat as config.yaml has always had it.
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # 0 = unbounded, as in Triton
    default_timeout_microseconds: int = 0  # 0 = no queue timeout
    allow_timeout_override: bool = False
    timeout_action: str = "REJECT"
    preserve_ordering: bool = False  # answers in the order the requests came
    priority_levels: int = 0  # 0 = one level; else levels 1 (first served) to priority_levels
    default_priority_level: int = 0  # the level of a request without a priority (1..priority_levels)
    priority_queue_policy: tuple[tuple[int, QueuePolicy], ...] = ()  # (level, its policy), by level

    @property
    def default_queue_policy(self) -> QueuePolicy:
        return QueuePolicy(self.max_queue_size, self.default_timeout_microseconds, self.allow_timeout_override,
                           self.timeout_action)


def check_priorities(batching: DynamicBatching, where: str) -> None:
    """Triton's rules: with priority levels, the default level and every level with a queue policy of its own
    are among them (1..priority_levels); without, neither is set."""
    levels = batching.priority_levels
    own = [level for level, _ in batching.priority_queue_policy]
    if levels == 0:
        if batching.default_priority_level or own:
            raise ConfigError(f"{where}: dynamic_batching: default_priority_level and priority_queue_policy need "
                              "priority_levels")
        return
    if not 1 <= batching.default_priority_level <= levels:
        raise ConfigError(f"{where}: dynamic_batching.default_priority_level: must be in [1, {levels}] "
                          f"(priority_levels), got {batching.default_priority_level}")
    outside = [level for level in own if not 1 <= level <= levels]
    if outside:
        raise ConfigError(f"{where}: dynamic_batching.priority_queue_policy: levels {outside} are not in "
                          f"[1, {levels}] (priority_levels)")


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
class TensorConfig:
    """A model input or output as the config declares it (Triton's ModelInput / ModelOutput), or as the load
    completes it from the graph."""

    name: str
    datatype: str  # the V2 name: FP32, BYTES, ...
    dims: tuple[int, ...]  # without the batch axis when max_batch_size > 0; -1 = any size
    reshape: tuple[int, ...] | None = None  # the shape the graph takes or gives (no batch axis); None = dims
    format: str = "FORMAT_NONE"  # inputs: FORMAT_NONE | FORMAT_NHWC | FORMAT_NCHW
    label_filename: str = ""  # outputs: class labels, one a line, in the model directory


@dataclass(frozen=True, slots=True)
class WarmupInput:
    datatype: str  # the V2 name
    dims: tuple[int, ...]  # without the batch axis
    source: str  # one of WARMUP_SOURCES
    input_data_file: str = ""  # in the model directory's warmup/ folder: raw row-major values (BYTES: V2 raw)


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One of Triton's model_warmup requests: batch_size 0 is skipped, count 0 runs it once (as Triton)."""

    name: str
    batch_size: int
    inputs: tuple[tuple[str, WarmupInput], ...]
    count: int = 0


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    name: str = ""
    kind: str = "KIND_AUTO"  # KIND_AUTO (the server's providers) | KIND_CPU | KIND_GPU
    count: int = 1  # with KIND_GPU: instances on each of `gpus`
    gpus: tuple[int, ...] = ()


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
    # Triton's keys. `triton` marks a config read from config.pbtxt: Triton's defaults and auto-complete
    # apply at load (core/autocomplete.py).
    triton: bool = False
    inputs: tuple[TensorConfig, ...] = ()  # () = all of the graph's, completed at load
    outputs: tuple[TensorConfig, ...] = ()
    model_warmup: tuple[WarmupSample, ...] | None = None  # None = the default warm-up (zeros, "0" for BYTES)
    instance_groups: tuple[InstanceGroup, ...] = ()  # config.pbtxt's; instance_count is their total
    model_filename: str = MODEL_FILENAME
    parameters: tuple[tuple[str, str], ...] = ()  # config.pbtxt's parameters, answered back as given


def load_model_config(path: Path, model_name: str | None = None) -> ModelConfig:
    """Reads models/<name>/config.yaml (`model_name`: the directory's, unless given); a missing file means every
    setting comes from the graph."""
    if not path.exists():
        return ModelConfig()
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    return parse_model_config(raw, where, model_name=model_name or path.parent.name)


TOP_LEVEL_KEYS = ("name", "max_batch_size", "dynamic_batching", "oversized_request", "instance_group",
                  "version_policy", "execution_providers", "session", "labels", "preprocess", "postprocess", "limits",
                  "model_warmup")


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
        batching = _parse_batching(top.section("dynamic_batching", BATCHING_KEYS))
    instances = top.section("instance_group", ["count"]).integer("count", 1, 1)
    providers = None
    if top.has("execution_providers"):
        listed = top.raw["execution_providers"]
        if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
            raise top.error("execution_providers", "a non-empty list of provider names")
        try:
            providers = provider_list(listed) or None  # [auto]: the server's --execution-providers
        except SettingError as exc:
            raise ConfigError(f"{where}: execution_providers: {exc}") from None
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
        model_warmup=_parse_warmup(top) if "model_warmup" in top.raw else None,
    )


def _parse_warmup(top: Section) -> tuple[WarmupSample, ...]:
    """model_warmup: a list of Triton's samples, with Triton's keys and data_type names."""
    listed = top.raw["model_warmup"]
    if not isinstance(listed, list):
        raise top.error("model_warmup", "a list of warm-up samples")
    samples = []
    for i, raw in enumerate(listed):
        sample = Section(raw, top.where, f"model_warmup[{i}]", ("name", "batch_size", "inputs", "count"))
        inputs = sample.raw.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise sample.error("inputs", "a mapping of input names to {data_type, dims, zero_data | random_data | "
                                         "input_data_file}")
        parsed = []
        for name, spec in inputs.items():
            given = Section(spec, top.where, f"{sample.name}.inputs.{name}", ("data_type", "dims", *WARMUP_SOURCES))
            sources = [key for key in WARMUP_SOURCES if key in given.raw]
            if len(sources) != 1:
                raise ConfigError(f"{top.where}: {given.name}: set exactly one of {', '.join(WARMUP_SOURCES)}")
            source = sources[0]
            data_file = given.string(source) if source == "input_data_file" else ""
            if source != "input_data_file" and given.raw[source] is not True:
                raise given.error(source, "true")
            if source == "input_data_file" and not data_file:
                raise given.error(source, "a file name in the model's warmup/ directory")
            parsed.append((str(name), WarmupInput(TRITON_TYPES[given.choice("data_type", "", tuple(TRITON_TYPES))],
                                                  given.integers("dims", 1), source, data_file or "")))
        samples.append(WarmupSample(sample.string("name") or f"sample {i}", sample.integer("batch_size", 1, 0),
                                    tuple(parsed), sample.integer("count", 0, 0)))
    return tuple(samples)


QUEUE_POLICY_KEYS = tuple(f.name for f in fields(QueuePolicy))
# Triton's keys, with the default queue policy's also flat (config.yaml's own spelling, kept).
BATCHING_KEYS = ("max_queue_delay_microseconds", "preferred_batch_size", *QUEUE_POLICY_KEYS, "preserve_ordering",
                 "priority_levels", "default_priority_level", "default_queue_policy", "priority_queue_policy")


def _parse_batching(section: Section) -> DynamicBatching:
    flat = [key for key in QUEUE_POLICY_KEYS if key in section.raw]
    if flat and section.has("default_queue_policy"):
        raise ConfigError(f"{section.where}: dynamic_batching: {', '.join(flat)} and default_queue_policy both set "
                          "the default queue policy; keep one")
    default = _parse_queue_policy(section.section("default_queue_policy", QUEUE_POLICY_KEYS)
                                  if section.has("default_queue_policy") else section, DEFAULT_MAX_QUEUE_SIZE)
    levels = section.raw.get("priority_queue_policy") or {}
    if not isinstance(levels, dict):
        raise section.error("priority_queue_policy", "a mapping of priority levels to queue policies")
    own = []
    for level, raw in levels.items():
        if not is_int(level):
            raise section.error("priority_queue_policy", f"priority levels as integers (got {level!r})")
        policy = Section(raw, section.where, f"dynamic_batching.priority_queue_policy.{level}", QUEUE_POLICY_KEYS)
        own.append((level, _parse_queue_policy(policy, DEFAULT_MAX_QUEUE_SIZE)))
    own.sort(key=lambda item: item[0])
    batching = DynamicBatching(
        max_queue_delay_microseconds=section.integer("max_queue_delay_microseconds", 0, 0),
        preferred_batch_size=tuple(sorted(set(section.integers("preferred_batch_size", 1, allow_single=True)))),
        max_queue_size=default.max_queue_size,
        default_timeout_microseconds=default.default_timeout_microseconds,
        allow_timeout_override=default.allow_timeout_override,
        timeout_action=default.timeout_action,
        preserve_ordering=section.boolean("preserve_ordering", False),
        priority_levels=section.integer("priority_levels", 0, 0),
        default_priority_level=section.integer("default_priority_level", 0, 0),
        priority_queue_policy=tuple(own),
    )
    check_priorities(batching, section.where)
    return batching


def _parse_queue_policy(section: Section, default_max_queue_size: int) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=section.integer("max_queue_size", default_max_queue_size, 0),
        default_timeout_microseconds=section.integer("default_timeout_microseconds", 0, 0),
        allow_timeout_override=section.boolean("allow_timeout_override", False),
        timeout_action=section.choice("timeout_action", "REJECT", TIMEOUT_ACTIONS),
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
