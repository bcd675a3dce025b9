"""Triton's config.pbtxt, read as it is: protobuf text format of inference.ModelConfig, mapped onto the same
dataclasses config.yaml gives, with Triton's semantics.

Every field the file sets is honoured, warned about (logged by name, without effect) or refused (the model is
UNAVAILABLE with the reason); FIELDS says which, and README.md ("Coming from Triton") has the same table. A
set field that FIELDS does not know is refused as well, so nothing a Triton user wrote is silently ignored.
What the graph decides (dims, max_batch_size and dynamic_batching when the file leaves them out) is completed
at load, as Triton's auto-complete does (core/autocomplete.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from onnx_serve.core.errors import ConfigError
from onnx_serve.core.model_config import (
    TRITON_TYPES,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    QueuePolicy,
    SessionConfig,
    TensorConfig,
    VersionPolicy,
    WarmupInput,
    WarmupSample,
    check_priorities,
    load_model_config,
)
from onnx_serve.protos.inference import model_config_pb2 as mc

log = logging.getLogger(__name__)

PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"
NOT_YET = "not supported yet"
HONOURED = "honoured"
# Every field path of inference.ModelConfig a config.pbtxt may set: HONOURED, or ("warn" | "refuse", why).
FIELDS: dict[str, str | tuple[str, str]] = {
    **dict.fromkeys((
        "name", "platform", "backend", "max_batch_size", "default_model_filename",
        "version_policy", "version_policy.latest", "version_policy.latest.num_versions", "version_policy.all",
        "version_policy.specific", "version_policy.specific.versions",
        "input", "input.name", "input.data_type", "input.format", "input.dims", "input.reshape",
        "input.reshape.shape",
        "output", "output.name", "output.data_type", "output.dims", "output.reshape", "output.reshape.shape",
        "output.label_filename",
        "dynamic_batching", "dynamic_batching.preferred_batch_size", "dynamic_batching.max_queue_delay_microseconds",
        "dynamic_batching.preserve_ordering", "dynamic_batching.priority_levels",
        "dynamic_batching.default_priority_level", "dynamic_batching.default_queue_policy",
        "dynamic_batching.priority_queue_policy",
        *(f"dynamic_batching.{policy}.{key}" for policy in ("default_queue_policy", "priority_queue_policy")
          for key in ("max_queue_size", "default_timeout_microseconds", "allow_timeout_override", "timeout_action")),
        "instance_group", "instance_group.name", "instance_group.kind", "instance_group.count",
        "instance_group.gpus",
        "optimization", "optimization.graph", "optimization.graph.level", "optimization.execution_accelerators",
        "optimization.execution_accelerators.gpu_execution_accelerator",
        "optimization.execution_accelerators.gpu_execution_accelerator.name",
        "optimization.execution_accelerators.cpu_execution_accelerator",
        "optimization.execution_accelerators.cpu_execution_accelerator.name",
        "parameters", "parameters.string_value",
        "model_warmup", "model_warmup.name", "model_warmup.batch_size", "model_warmup.count", "model_warmup.inputs",
        "model_warmup.inputs.data_type", "model_warmup.inputs.dims", "model_warmup.inputs.zero_data",
        "model_warmup.inputs.random_data", "model_warmup.inputs.input_data_file",
        "model_transaction_policy",
    ), HONOURED),
    "runtime": ("refuse", "onnx-serve runs ONNX Runtime in-process; there is no backend library to choose"),
    # ONNX Runtime runs without an input only when the graph gives it a default (an initializer that is also a
    # graph input), and onnx-serve does not serve those as inputs; a graph input without one cannot be left out.
    "input.optional": ("refuse", f"{NOT_YET}: every request must carry every input of the graph"),
    "input.is_shape_tensor": ("refuse", "shape tensors are a TensorRT-plan feature, not served"),
    "output.is_shape_tensor": ("refuse", "shape tensors are a TensorRT-plan feature, not served"),
    "input.allow_ragged_batch": ("refuse", "ragged batching is not supported"),
    "input.is_non_linear_format_io": ("refuse", "non-linear formats are a TensorRT-plan feature, not served"),
    "output.is_non_linear_format_io": ("refuse", "non-linear formats are a TensorRT-plan feature, not served"),
    "batch_input": ("refuse", "batch inputs are not supported"),
    "batch_output": ("refuse", "batch outputs are not supported"),
    "sequence_batching": ("refuse", "stateful (sequence) models are not supported"),
    "ensemble_scheduling": ("refuse", "ensembles are not supported"),
    "instance_group.secondary_devices": ("refuse", "secondary devices are not supported"),
    "instance_group.passive": ("refuse", "passive instances are not supported: every instance serves"),
    "instance_group.rate_limiter": ("warn", "there is no rate limiter; instances run whenever a batch is ready"),
    "instance_group.profile": ("warn", "TensorRT optimisation profiles are not chosen per instance"),
    "instance_group.host_policy": ("warn", "host policies are not applied"),
    "model_transaction_policy.decoupled": ("refuse", "decoupled models (many responses per request) are not "
                                                     "supported"),
    "model_repository_agents": ("refuse", "repository agents are not run: the model files are read as they are"),
    "model_operations": ("refuse", "custom operation libraries are not loaded"),
    "optimization.execution_accelerators.gpu_execution_accelerator.parameters": (
        "warn", "accelerator parameters are not passed to the provider"),
    "optimization.execution_accelerators.cpu_execution_accelerator.parameters": (
        "warn", "accelerator parameters are not passed to the provider"),
    "optimization.priority": ("warn", "model priorities are not applied"),
    "optimization.cuda": ("warn", "CUDA graph and stream settings are not applied"),
    "optimization.input_pinned_memory": ("warn", "pinned memory is not used"),
    "optimization.output_pinned_memory": ("warn", "pinned memory is not used"),
    "optimization.gather_kernel_buffer_threshold": ("warn", "not applied"),
    "optimization.eager_batching": ("warn", "not applied: a batch starts when an instance is free"),
    "cc_model_filenames": ("warn", "not applied: default_model_filename is served on every GPU"),
    "metric_tags": ("warn", "not applied to onnx-serve's metrics"),
    "response_cache": ("warn", "there is no response cache: every request runs"),
    "model_metrics": ("warn", "not applied to onnx-serve's metrics"),
}
# ONNX Runtime backend parameters onnx-serve applies; any other key is kept (ModelConfig answers it) and warned.
SESSION_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count", "enable_mem_arena", "execution_mode")
# Triton's optimization.graph.level for ONNX Runtime (other values: all optimisations).
GRAPH_LEVELS = {-1: "basic", 1: "extended", 2: "disabled"}
ACCELERATORS = {"gpu": {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"},
                "cpu": {"openvino": "OpenVINOExecutionProvider"}}
FORMATS = ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")


def read_model_config(directory: Path, model_name: str | None = None) -> ModelConfig:
    """The config of a model's directory: config.pbtxt (Triton's), config.yaml (ours), or none (all from the
    graph); `model_name` (the directory's, unless given) is what a `name` in it must say. A directory with
    both files is refused: which one wins would be a guess."""
    pbtxt, yaml = directory / "config.pbtxt", directory / "config.yaml"
    if pbtxt.exists() and yaml.exists():
        raise ConfigError(f"{directory}: has both config.pbtxt and config.yaml; keep one (config.pbtxt is "
                          "Triton's, read as it is; config.yaml is onnx-serve's)")
    return load_triton_config(pbtxt, model_name) if pbtxt.exists() else load_model_config(yaml, model_name)


def load_triton_config(path: Path, model_name: str | None = None) -> ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_triton_config(text, str(path), model_name or path.parent.name)


def parse_triton_config(text: str, where: str, model_name: str) -> ModelConfig:
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: not a valid Triton model configuration (protobuf text format): {exc}") from None
    for note in check_fields(message, where):
        log.warning("%s", note)
    if message.name and message.name != model_name:
        raise ConfigError(f"{where}: name: '{message.name}' differs from the model directory '{model_name}'")
    for key, served in (("platform", PLATFORM), ("backend", BACKEND)):
        if getattr(message, key) not in ("", served):
            raise ConfigError(f"{where}: {key}: '{getattr(message, key)}' is not served: onnx-serve serves ONNX "
                              f"models on ONNX Runtime (platform {PLATFORM}, backend {BACKEND})")
    if message.max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size: must be >= 0, got {message.max_batch_size}")
    declared = bool(message.input) and bool(message.output)
    # Without both inputs and outputs the graph completes the config, and 0 means "not given" (Triton's rule).
    max_batch_size = message.max_batch_size if declared or message.max_batch_size else None
    batching = (dynamic_batching_of(message.dynamic_batching, where) if message.HasField("dynamic_batching")
                else None)
    groups = _instance_groups(message, where, model_name)
    return ModelConfig(
        triton=True,
        max_batch_size=max_batch_size,
        dynamic_batching=batching,
        instance_count=sum(g.count or 1 for g in groups),
        instance_groups=groups,
        version_policy=_version_policy(message.version_policy, where),
        execution_providers=_providers(message, groups, where),
        session=_session(message, where),
        inputs=tuple(_tensor(t, "input", message.max_batch_size, where) for t in message.input),
        outputs=tuple(_tensor(t, "output", message.max_batch_size, where) for t in message.output),
        model_warmup=tuple(_warmup(w, where) for w in message.model_warmup) if message.model_warmup else None,
        model_filename=_file_name(message.default_model_filename, "default_model_filename", where) or "model.onnx",
        parameters=tuple(sorted((k, v.string_value) for k, v in message.parameters.items())),
    )


def check_fields(message: Message, where: str) -> list[str]:
    """Walks every field the file sets (ListFields, so nothing is skipped): raises ConfigError at the first
    refused or unknown one, and returns a warning line for each warned one."""
    notes: list[str] = []
    for path, shown in _set_fields(message, "", ""):
        rule = FIELDS.get(path)
        if rule is None:
            raise ConfigError(f"{where}: {shown}: not supported by onnx-serve (see README.md, Coming from Triton)")
        if not isinstance(rule, str):
            action, why = rule
            if action == "refuse":
                raise ConfigError(f"{where}: {shown}: {why}")
            notes.append(f"{where}: {shown}: ignored: {why}")
    return notes


def _set_fields(message: Message, prefix: str, shown_prefix: str) -> Iterator[tuple[str, str]]:
    """(path, path as shown) of every field set in `message` and below; a repeated element is shown with its
    name or index, a map value with its key."""
    for field, value in message.ListFields():
        path, shown = prefix + field.name, shown_prefix + field.name
        yield path, shown
        if FIELDS.get(path) != HONOURED or field.type != FieldDescriptor.TYPE_MESSAGE:
            continue  # a warned sub-message is named once, not field by field
        for label, child in _children(field, value):
            yield from _set_fields(child, path + ".", f"{shown}{label}.")


def _children(field: FieldDescriptor, value: Any) -> Iterator[tuple[str, Message]]:
    if field.message_type.GetOptions().map_entry:
        if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
            yield from ((f"['{key}']", item) for key, item in sorted(value.items()))
    elif field.is_repeated:
        for i, item in enumerate(value):
            name = getattr(item, "name", "")
            yield (f"['{name}']" if isinstance(name, str) and name else f"[{i}]"), item
    else:
        yield "", value


def _tensor(tensor: Any, kind: str, max_batch_size: int, where: str) -> TensorConfig:
    """One input or output, checked as Triton's ValidateIOShape does."""
    here = f"{where}: {kind} '{tensor.name}'"
    if not tensor.name:
        raise ConfigError(f"{where}: {kind}: every {kind} needs a name")
    type_name = mc.DataType.Name(tensor.data_type)
    if type_name not in TRITON_TYPES:
        raise ConfigError(f"{here}: data_type {type_name} cannot be served (expected one of "
                          f"{', '.join(TRITON_TYPES)})")
    dims = tuple(tensor.dims)
    if not dims:
        raise ConfigError(f"{here}: dims: must be given (use [ 1 ] for a scalar, with reshape {{ shape: [ ] }} "
                          "when max_batch_size > 0)")
    if any(d < 1 and d != -1 for d in dims):
        raise ConfigError(f"{here}: dims {list(dims)}: each must be >= 1, or -1 for a variable size")
    reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    if reshape is not None:
        _check_reshape(dims, reshape, max_batch_size, here)
    fmt = mc.ModelInput.Format.Name(tensor.format) if kind == "input" else "FORMAT_NONE"
    if fmt != "FORMAT_NONE" and len(dims) != 3:
        raise ConfigError(f"{here}: format {fmt} needs 3 dims (C, H, W in its order), got {list(dims)}")
    labels = ""
    if kind == "output":
        labels = _file_name(tensor.label_filename, f"{kind} '{tensor.name}': label_filename", where)
    return TensorConfig(tensor.name, TRITON_TYPES[type_name], dims, reshape, fmt, labels)


def _file_name(name: str, key: str, where: str) -> str:
    """A file of the model's own directory (or version directory): no way out of it."""
    if name and (name.startswith("/") or ".." in Path(name).parts):
        raise ConfigError(f"{where}: {key}: '{name}' must name a file inside the model's directory")
    return name


def _check_reshape(dims: tuple[int, ...], reshape: tuple[int, ...], max_batch_size: int, here: str) -> None:
    if not reshape and max_batch_size == 0:
        raise ConfigError(f"{here}: reshape: cannot be empty for a model without batching (max_batch_size 0)")
    if any(d < 1 and d != -1 for d in reshape):
        raise ConfigError(f"{here}: reshape {list(reshape)}: each must be >= 1, or -1 for a variable size")

    def runs(shape: tuple[int, ...]) -> list[int]:  # the element counts between variable-size dimensions
        counts, current = [], 1
        for d in shape:
            if d == -1:
                counts.append(current)
                current = 1
            else:
                current *= d
        return [*counts, current]

    if runs(dims) != runs(reshape) and not (not reshape and runs(dims) == [1]):
        raise ConfigError(f"{here}: dims {list(dims)} and reshape {list(reshape)} hold different numbers of elements "
                          "(or variable-size dimensions in different places)")


def _instance_groups(message: Any, where: str, model_name: str) -> tuple[InstanceGroup, ...]:
    if not message.instance_group:  # Triton's default: one group named after the model
        return (InstanceGroup(name=model_name, count=0),)
    groups = []
    for i, group in enumerate(message.instance_group):
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        name = group.name or f"{model_name}_{i}"
        if kind == "KIND_MODEL":
            raise ConfigError(f"{where}: instance_group '{name}': kind KIND_MODEL is not supported (use KIND_CPU, "
                              "KIND_GPU or leave it out)")
        if group.count < 0:
            raise ConfigError(f"{where}: instance_group '{name}': count must be >= 0, got {group.count}")
        if group.gpus and kind == "KIND_CPU":
            raise ConfigError(f"{where}: instance_group '{name}': has kind KIND_CPU but lists gpus")
        if any(gpu < 0 for gpu in group.gpus):
            raise ConfigError(f"{where}: instance_group '{name}': gpus must be >= 0, got {list(group.gpus)}")
        groups.append(InstanceGroup(name, "KIND_GPU" if group.gpus and kind == "KIND_AUTO" else kind, group.count,
                                    tuple(group.gpus)))
    if len({g.kind for g in groups}) > 1:
        raise ConfigError(f"{where}: instance_group: groups of different kinds ({', '.join(g.kind for g in groups)}) "
                          f"are {NOT_YET}: every instance of a model runs on the same providers")
    return tuple(groups)


def _providers(message: Any, groups: tuple[InstanceGroup, ...], where: str) -> tuple[str, ...] | None:
    """Execution providers from the instance kind and optimization.execution_accelerators, best first; None
    (the server's --execution-providers) for KIND_AUTO without accelerators."""
    accelerators = message.optimization.execution_accelerators
    chosen: dict[str, list[str]] = {"gpu": [], "cpu": []}
    for side, listed in (("gpu", accelerators.gpu_execution_accelerator),
                         ("cpu", accelerators.cpu_execution_accelerator)):
        for accelerator in listed:
            provider = ACCELERATORS[side].get(accelerator.name)
            if provider is None:
                raise ConfigError(f"{where}: optimization.execution_accelerators.{side}_execution_accelerator: "
                                  f"unknown Execution Accelerator '{accelerator.name}' (known: "
                                  f"{', '.join(ACCELERATORS[side])})")
            chosen[side].append(provider)
    kind = groups[0].kind
    if kind == "KIND_CPU":
        if chosen["gpu"]:
            log.warning("%s: optimization.execution_accelerators.gpu_execution_accelerator: ignored: the instances "
                        "are KIND_CPU", where)
        providers = [*chosen["cpu"], "CPUExecutionProvider"]
    elif kind == "KIND_GPU":
        providers = [*chosen["gpu"], "CUDAExecutionProvider", "CPUExecutionProvider"]
    elif chosen["gpu"] or chosen["cpu"]:
        gpu = [*chosen["gpu"], "CUDAExecutionProvider"] if chosen["gpu"] else []
        providers = [*gpu, *chosen["cpu"], "CPUExecutionProvider"]
    else:
        return None
    return tuple(dict.fromkeys(providers))


def _session(message: Any, where: str) -> SessionConfig:
    parameters: Mapping[str, Any] = message.parameters
    values = {key: parameters[key].string_value for key in parameters}
    for key in sorted(set(values) - set(SESSION_PARAMETERS)):
        log.warning("%s: parameters['%s']: ignored: not an ONNX Runtime backend parameter onnx-serve applies "
                    "(it applies %s)", where, key, ", ".join(SESSION_PARAMETERS))
    if values.get("execution_mode", "0").strip() not in ("0", "1"):
        raise ConfigError(f"{where}: parameters['execution_mode']: expected 0 or 1, got '{values['execution_mode']}'")
    if values.get("execution_mode", "0").strip() == "1":
        log.warning("%s: parameters['execution_mode']: ignored: sessions run sequentially", where)
    level = GRAPH_LEVELS.get(message.optimization.graph.level, "all")
    return SessionConfig(graph_optimization_level=level,
                         intra_op_threads=_count(values, "intra_op_thread_count", where),
                         inter_op_threads=_count(values, "inter_op_thread_count", where),
                         memory_arena=_flag(values, "enable_mem_arena", True, where))


def _count(values: Mapping[str, str], key: str, where: str) -> int:
    text = values.get(key, "0").strip()
    if not text.isdigit():
        raise ConfigError(f"{where}: parameters['{key}']: expected a whole number >= 0, got '{values[key]}'")
    return int(text)


def _flag(values: Mapping[str, str], key: str, default: bool, where: str) -> bool:
    text = values.get(key, "").strip().lower()
    if not text:
        return default
    if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"{where}: parameters['{key}']: expected true or false, got '{values[key]}'")
    return text in ("true", "1", "yes", "on")


def _version_policy(policy: Any, where: str) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"{where}: version_policy.specific.versions: list at least one version")
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if choice == "latest" and policy.latest.num_versions == 0:
        raise ConfigError(f"{where}: version_policy.latest.num_versions: must be >= 1")
    return VersionPolicy("latest", num_versions=policy.latest.num_versions if choice else 1)


def _warmup(sample: Any, where: str) -> WarmupSample:
    inputs = []
    for name, given in sorted(sample.inputs.items()):
        type_name = mc.DataType.Name(given.data_type)
        source = given.WhichOneof("input_data_type")
        here = f"{where}: model_warmup '{sample.name}': input '{name}'"
        if type_name not in TRITON_TYPES:
            raise ConfigError(f"{here}: data_type {type_name} cannot be served")
        if source is None:
            raise ConfigError(f"{here}: set one of zero_data, random_data, input_data_file")
        inputs.append((name, WarmupInput(TRITON_TYPES[type_name], tuple(given.dims), source,
                                         given.input_data_file)))
    return WarmupSample(sample.name, sample.batch_size, tuple(inputs), sample.count)


def dynamic_batching_of(batching: Any, where: str) -> DynamicBatching:
    """A config.pbtxt's dynamic_batching (`where`: the file, for errors)."""
    default = _queue_policy(batching.default_queue_policy)
    parsed = DynamicBatching(
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        preferred_batch_size=tuple(sorted(set(batching.preferred_batch_size))),
        max_queue_size=default.max_queue_size,  # 0 = unbounded, as Triton
        default_timeout_microseconds=default.default_timeout_microseconds,
        allow_timeout_override=default.allow_timeout_override,
        timeout_action=default.timeout_action,
        preserve_ordering=batching.preserve_ordering,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        priority_queue_policy=tuple(sorted((level, _queue_policy(policy))
                                           for level, policy in batching.priority_queue_policy.items())),
    )
    check_priorities(parsed, where)
    return parsed


def _queue_policy(policy: Any) -> QueuePolicy:
    return QueuePolicy(policy.max_queue_size, policy.default_timeout_microseconds, policy.allow_timeout_override,
                       mc.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action))


def dynamic_batching_message(batching: DynamicBatching) -> mc.ModelDynamicBatching:
    """`dynamic_batching` as ModelConfig answers it: every knob, with the queue policies (the default one as
    Triton fills it in, always)."""
    out = mc.ModelDynamicBatching(preferred_batch_size=batching.preferred_batch_size,
                                  max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                                  preserve_ordering=batching.preserve_ordering,
                                  priority_levels=batching.priority_levels,
                                  default_priority_level=batching.default_priority_level)
    out.default_queue_policy.CopyFrom(_queue_policy_message(batching.default_queue_policy))
    for level, policy in batching.priority_queue_policy:
        out.priority_queue_policy[level].CopyFrom(_queue_policy_message(policy))
    return out


def _queue_policy_message(policy: QueuePolicy) -> mc.ModelQueuePolicy:
    return mc.ModelQueuePolicy(timeout_action=policy.timeout_action,  # the enum value's name
                               default_timeout_microseconds=policy.default_timeout_microseconds,
                               allow_timeout_override=policy.allow_timeout_override,
                               max_queue_size=policy.max_queue_size)
