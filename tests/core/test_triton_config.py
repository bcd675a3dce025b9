"""Triton's config.pbtxt read as it is: fields honoured, warned about or refused by name, Triton's auto-complete
from the graph, checks against the graph that name both sides, and model_warmup of each kind."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto
from onnx_serve.core import runtime
from onnx_serve.core.errors import ConfigError
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.model_config import (
    DynamicBatching,
    InstanceGroup,
    QueuePolicy,
    TensorConfig,
    VersionPolicy,
    WarmupInput,
    WarmupSample,
    parse_model_config,
)
from onnx_serve.core.repository import Repository
from onnx_serve.core.scheduling import batch_policy
from onnx_serve.core.settings import Settings
from onnx_serve.core.triton_config import (
    FIELDS,
    HONOURED,
    dynamic_batching_message,
    parse_triton_config,
    read_model_config,
)
from onnx_serve.core.version import ModelVersion, State
from onnx_serve.protos.inference import model_config_pb2 as mc

from tests.helpers.serving import ROOT, add_model, identity_model
from tests.helpers.triton_examples import (
    DENSENET_CONFIG,
    add_sub_config,
    add_sub_model,
    densenet_like_model,
    string_add_sub_model,
)

WHERE = "models/m/config.pbtxt"
CPU = Settings(execution_providers=("CPUExecutionProvider",))


def parse(text: str, name: str = "m") -> Any:
    return parse_triton_config(text, WHERE, name)


def load(root: Path, name: str) -> ModelVersion | str:
    """Loads one model of `root`: its version 1 when READY, else the reason it is not."""

    async def run() -> ModelVersion | str:
        repo = Repository(root, CPU, Metrics())
        model = await repo.load(name)
        try:
            if model.state is not State.READY:
                return model.reason
            return model.versions[1]
        finally:
            await repo.close()

    return asyncio.run(run())


def ready(root: Path, name: str) -> ModelVersion:
    loaded = load(root, name)
    assert isinstance(loaded, ModelVersion), loaded
    return loaded


def reason(root: Path, name: str) -> str:
    loaded = load(root, name)
    assert isinstance(loaded, str), f"{name} loaded, but should not have"
    return loaded


def model_dir(root: Path, name: str, config: str, build: Callable[[Path], Path] = add_sub_model) -> Path:
    build(root / name / "1" / "model.onnx")
    (root / name / "config.pbtxt").write_text(config)
    return root / name


# ------------------------------------------------------------------------------------------- reading


def test_the_simple_example_maps_onto_our_config() -> None:
    config = parse(add_sub_config("simple", "TYPE_INT32"), "simple")
    assert config.triton and config.max_batch_size == 8 and config.dynamic_batching is None
    assert config.inputs == (TensorConfig("INPUT0", "INT32", (16,)), TensorConfig("INPUT1", "INT32", (16,)))
    assert [o.name for o in config.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert config.version_policy == VersionPolicy("latest", 1) and config.model_warmup is None
    assert config.instance_groups == (InstanceGroup("simple", "KIND_AUTO", 0),)  # Triton's default group
    assert config.execution_providers is None  # KIND_AUTO: the server's providers
    assert parse(add_sub_config("simple_string", "TYPE_STRING"), "simple_string").inputs[0].datatype == "BYTES"


def test_the_densenet_example_keeps_format_reshape_and_labels() -> None:
    config = parse(DENSENET_CONFIG, "densenet_onnx")
    assert config.max_batch_size == 0  # declared inputs and outputs: 0 means 0
    [data] = config.inputs
    assert (data.dims, data.reshape, data.format) == ((3, 224, 224), (1, 3, 224, 224), "FORMAT_NCHW")
    [scores] = config.outputs
    assert (scores.dims, scores.reshape, scores.label_filename) == ((1000,), (1, 1000, 1, 1), "densenet_labels.txt")


def test_every_honoured_knob_is_read() -> None:
    config = parse('''
        name: "m" backend: "onnxruntime" max_batch_size: 16 default_model_filename: "net.onnx"
        version_policy { specific { versions: [ 1, 3 ] } }
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
        dynamic_batching { preferred_batch_size: [ 8, 4 ] max_queue_delay_microseconds: 100
                           default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 50
                                                  allow_timeout_override: true } }
        instance_group [ { name: "g" kind: KIND_GPU count: 2 gpus: [ 1, 2 ] } ]
        optimization { graph { level: 1 }
                       execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "enable_mem_arena" value: { string_value: "false" } }
        model_warmup [ { name: "w" batch_size: 2 count: 3 inputs { key: "x" value: {
                         data_type: TYPE_FP32 dims: [ 4 ] random_data: true } } } ]
    ''')
    assert config.max_batch_size == 16 and config.model_filename == "net.onnx"
    assert config.version_policy.select([1, 2, 3]) == [1, 3]
    assert config.dynamic_batching == DynamicBatching(100, (4, 8), 7, 50, allow_timeout_override=True)
    assert config.instance_groups == (InstanceGroup("g", "KIND_GPU", 2, (1, 2)),)
    assert config.execution_providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert (config.session.graph_optimization_level, config.session.intra_op_threads,
            config.session.inter_op_threads, config.session.memory_arena) == ("extended", 3, 2, False)
    assert config.model_warmup == (WarmupSample("w", 2, (("x", WarmupInput("FP32", (4,), "random_data")),), 3),)
    assert dict(config.parameters)["intra_op_thread_count"] == "3"


def test_priorities_and_queue_policies_are_read() -> None:
    config = parse('''
        max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
        dynamic_batching {
          preserve_ordering: true priority_levels: 3 default_priority_level: 2
          default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 9 max_queue_size: 5 }
          priority_queue_policy [
            { key: 3 value: { max_queue_size: 1 } },
            { key: 1 value: { timeout_action: REJECT default_timeout_microseconds: 20 allow_timeout_override: true } }
          ]
        }
    ''')
    batching = config.dynamic_batching
    assert batching is not None and batching.preserve_ordering
    assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
    assert batching.default_queue_policy == QueuePolicy(5, 9, False, "DELAY")
    assert batching.priority_queue_policy == ((1, QueuePolicy(0, 20, True, "REJECT")),
                                              (3, QueuePolicy(max_queue_size=1)))
    policy = batch_policy(batching, 4, split_oversized=False)
    assert policy.level_of(0) == 2 and policy.level_of(1) == 1 and policy.level_of(4) == 2
    assert policy.queue_policy(1).allow_timeout_override and policy.queue_policy(1).default_timeout_ns == 20_000
    assert policy.queue_policy(2).delay_on_timeout and policy.queue_policy(2).max_queue_size == 5
    assert policy.queue_policy(3).max_queue_size == 1 and policy.preserve_ordering


def test_dynamic_batching_is_answered_with_every_knob() -> None:
    text = ('max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ] dynamic_batching { '
            'preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 7 preserve_ordering: true priority_levels: 2 '
            'default_priority_level: 1 default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 9 '
            'allow_timeout_override: true max_queue_size: 3 } priority_queue_policy { key: 2 value: { '
            'max_queue_size: 1 } } }')
    batching = parse(text).dynamic_batching
    assert batching is not None
    answered = dynamic_batching_message(batching)
    given = mc.ModelConfig()
    text_format.Parse(text, given)
    assert answered == given.dynamic_batching  # what the file said, field by field
    assert dynamic_batching_message(DynamicBatching()).default_queue_policy.max_queue_size == 1024


def test_yaml_takes_the_same_dynamic_batching_keys() -> None:
    raw = {"dynamic_batching": {"preserve_ordering": True, "priority_levels": 2, "default_priority_level": 2,
                                "default_queue_policy": {"timeout_action": "DELAY", "default_timeout_microseconds": 9},
                                "priority_queue_policy": {1: {"max_queue_size": 3, "allow_timeout_override": True}}}}
    batching = parse_model_config(raw, "config.yaml", "m").dynamic_batching
    assert batching is not None and batching.preserve_ordering and batching.priority_levels == 2
    assert batching.default_queue_policy == QueuePolicy(1024, 9, False, "DELAY")  # config.yaml's queue bound
    assert batching.priority_queue_policy == ((1, QueuePolicy(3, 0, True, "REJECT")),)
    for bad, message in [
        ({"max_queue_size": 3, "default_queue_policy": {}}, "max_queue_size and default_queue_policy both set"),
        ({"timeout_action": "DROP"}, "dynamic_batching.timeout_action: expected one of REJECT, DELAY"),
        ({"priority_levels": 2, "default_priority_level": 1, "priority_queue_policy": {"1": {}}},
         "priority levels as integers"),
        ({"priority_queue_policy": {1: {"max_queue_size": 2}}}, "need priority_levels"),
        ({"default_queue_policy": {"allow_timeout_override": "yes"}},
         "dynamic_batching.default_queue_policy.allow_timeout_override: expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_model_config({"dynamic_batching": bad}, "config.yaml", "m")


def test_cpu_instances_with_openvino_and_graph_levels() -> None:
    config = parse('instance_group [ { kind: KIND_CPU } ] optimization { graph { level: 2 } '
                   'execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }')
    assert config.execution_providers == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert config.instance_groups == (InstanceGroup("m_0", "KIND_CPU", 0),)
    assert config.session.graph_optimization_level == "disabled"


@pytest.mark.parametrize(("text", "message"), [
    ('platform: "tensorflow_graphdef"', "platform: 'tensorflow_graphdef' is not served"),
    ('backend: "python"', "backend: 'python' is not served"),
    ('name: "other"', "name: 'other' differs from the model directory 'm'"),
    ("sequence_batching { }", "sequence_batching: stateful (sequence) models are not supported"),
    ("ensemble_scheduling { }", "ensemble_scheduling: ensembles are not supported"),
    ('input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] is_shape_tensor: true } ]',
     "input['x'].is_shape_tensor: shape tensors"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]',
     "input['x'].optional: not supported yet"),
    ("dynamic_batching { priority_levels: 2 }", "default_priority_level: must be in [1, 2] (priority_levels), got 0"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 3 }", "must be in [1, 2]"),
    ("dynamic_batching { default_priority_level: 1 }", "default_priority_level and priority_queue_policy need "
                                                       "priority_levels"),
    ("dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value: { "
     "max_queue_size: 3 } } }", "priority_queue_policy: levels [3] are not in [1, 2]"),
    ("instance_group [ { kind: KIND_MODEL } ]", "kind KIND_MODEL is not supported"),
    ("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]", "groups of different kinds"),
    ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "has kind KIND_CPU but lists gpus"),
    ("instance_group [ { passive: true } ]", "instance_group[0].passive: passive instances"),
    ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled: decoupled models"),
    ('model_repository_agents { agents [ { name: "checksum" } ] }', "model_repository_agents: repository agents"),
    ('runtime: "libtriton_onnxruntime.so"', "runtime: onnx-serve runs ONNX Runtime in-process"),
    ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_INT32 } ]', "batch_input:"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "rocket" } ] } }',
     "unknown Execution Accelerator 'rocket'"),
    ("max_batch_size: -2", "max_batch_size: must be >= 0"),
    ('default_model_filename: "../other/model.onnx"', "default_model_filename: '../other/model.onnx' must name"),
    ('output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] label_filename: "/etc/passwd" } ]',
     "output 'y': label_filename: '/etc/passwd' must name a file inside"),
    ('input [ { name: "x" data_type: TYPE_BF16 dims: [ 1 ] } ]', "data_type TYPE_BF16 cannot be served"),
    ('input [ { name: "x" data_type: TYPE_FP32 } ]', "input 'x': dims: must be given"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]', "each must be >= 1, or -1"),
    ('input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4 ] } ]',
     "format FORMAT_NCHW needs 3 dims"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 6 ] reshape { shape: [ 4 ] } } ]', "hold different numbers"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape { shape: [ -1, 2 ] } } ]',
     "variable-size dimensions in different places"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape { } } ]', "reshape: cannot be empty"),
    ("version_policy { latest { } }", "version_policy.latest.num_versions: must be >= 1"),
    ("version_policy { specific { } }", "version_policy.specific.versions"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
     "parameters['intra_op_thread_count']: expected a whole number"),
    ('parameters { key: "enable_mem_arena" value: { string_value: "maybe" } }', "expected true or false"),
    ('parameters { key: "execution_mode" value: { string_value: "2" } }', "expected 0 or 1"),
    ("max_batch_size: [unclosed", "not a valid Triton model configuration"),
    ("no_such_field: 1", "not a valid Triton model configuration"),
])
def test_refused_fields_are_named_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text)
    assert str(error.value).startswith(f"{WHERE}: ") and message in str(error.value), str(error.value)


@pytest.mark.parametrize(("text", "named"), [
    ("response_cache { enable: true }", "response_cache: ignored: there is no response cache"),
    ('metric_tags { key: "team" value: "vision" }', "metric_tags: ignored"),
    ("optimization { cuda { graphs: true } }", "optimization.cuda: ignored"),
    ("optimization { input_pinned_memory { enable: true } }", "optimization.input_pinned_memory: ignored"),
    ("instance_group [ { rate_limiter { priority: 2 } } ]", "instance_group[0].rate_limiter: ignored"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" parameters { '
     'key: "precision_mode" value: "FP16" } } ] } }',
     "optimization.execution_accelerators.gpu_execution_accelerator['tensorrt'].parameters: ignored"),
    ('parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }',
     "parameters['cudnn_conv_algo_search']: ignored"),
])
def test_warned_fields_are_logged_by_name(text: str, named: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "onnx_serve.core.triton_config"):
        parse(text)
    assert named in caplog.text, caplog.text


def test_a_set_field_the_table_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(FIELDS, "response_cache")  # as a field Triton adds to its schema would be
    with pytest.raises(ConfigError, match=r"response_cache: not supported by onnx-serve"):
        parse("response_cache { enable: true }")


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Coming from Triton"):]
    return section[:section.index("\n## ", 1)]


def test_the_readme_table_names_every_field() -> None:
    rows = [line for line in readme_section().splitlines() if line.startswith("| `")]
    for path, rule in FIELDS.items():
        row = next((line for line in rows if f"`{path}`" in line.split(" | ")[0]), None)
        assert row is not None, f"README.md, Coming from Triton: {path} is not in the table"
        word = "honoured" if rule == HONOURED else {"warn": "warned", "refuse": "refused"}[rule[0]]
        assert row.split(" | ")[1] == word, f"README.md says something else than {word} for {path}: {row}"


def test_the_readme_warmup_examples_parse() -> None:
    import yaml

    pbtxt, yaml_text = re.findall(r"```(?:yaml)?\n(.*?)```", readme_section(), re.DOTALL)
    [sample] = parse(textwrap.dedent(pbtxt)).model_warmup
    assert sample.inputs[0] == ("INPUT0", WarmupInput("BYTES", (16,), "input_data_file", "digits"))
    config = parse_model_config(yaml.safe_load(textwrap.dedent(yaml_text)), "m/config.yaml", "m")
    assert config.model_warmup == (sample,)


def test_a_directory_with_both_configs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "x"')
    (tmp_path / "config.yaml").write_text("max_batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"has both config\.pbtxt and config\.yaml; keep one"):
        read_model_config(tmp_path)


def test_yaml_takes_the_same_model_warmup_keys() -> None:
    config = parse_model_config({"model_warmup": [{"name": "digits", "batch_size": 2, "count": 1, "inputs": {
        "x": {"data_type": "TYPE_STRING", "dims": [16], "input_data_file": "digits.bin"}}}]}, "m/config.yaml", "m")
    assert config.model_warmup == (WarmupSample("digits", 2, (("x", WarmupInput("BYTES", (16,), "input_data_file",
                                                                                  "digits.bin")),), 1),)
    assert parse_model_config({"model_warmup": []}, "m/config.yaml", "m").model_warmup == ()
    for bad, message in ((5, "a list of warm-up samples"), ([{"inputs": {}}], "model_warmup[0].inputs"),
                         ([{"inputs": {"x": {"data_type": "TYPE_FP32", "dims": [1]}}}], "set exactly one of"),
                         ([{"inputs": {"x": {"data_type": "FP32", "dims": [1], "zero_data": True}}}], "data_type"),
                         ([{"inputs": {"x": {"data_type": "TYPE_FP32", "dims": [0], "zero_data": True}}}], "dims")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_model_config({"model_warmup": bad}, "m/config.yaml", "m")


# ------------------------------------------------------------------------- completed from the graph


def test_a_config_without_inputs_and_outputs_is_completed_as_triton_does(tmp_path: Path) -> None:
    model_dir(tmp_path, "simple", 'name: "simple" platform: "onnxruntime_onnx"')
    config = ready(tmp_path, "simple").config
    assert config.max_batch_size == 4  # Triton's default-max-batch-size for a graph that can batch
    assert config.dynamic_batching == DynamicBatching(preferred_batch_size=(4,), max_queue_size=0)
    assert [(t.name, t.datatype, t.dims) for t in config.inputs + config.outputs] == [
        (name, "INT32", (16,)) for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    assert config.instance_groups == (InstanceGroup("simple", "KIND_CPU", 2),)  # Triton's default on the CPU


def test_a_batch_only_tensor_is_dims_one_with_an_empty_reshape(tmp_path: Path) -> None:
    identity_model(tmp_path / "ids" / "1" / "model.onnx", TensorProto.INT64, shape=["N"])
    (tmp_path / "ids" / "config.pbtxt").write_text("max_batch_size: 2 dynamic_batching { }")
    version = ready(tmp_path, "ids")
    assert [(t.dims, t.reshape) for t in version.config.inputs + version.config.outputs] == [((1,), ())] * 2
    assert version.signature.inputs[0].shape == (-1, 1)  # what clients send: [batch, 1]

    async def run() -> list[np.ndarray]:
        repo = Repository(tmp_path, CPU, Metrics())
        await repo.load("ids")
        try:
            return (await repo.get("ids").infer({"x": np.array([[5], [6]], np.int64)}, None)).outputs
        finally:
            await repo.close()

    [y] = asyncio.run(run())
    assert y.tolist() == [[5], [6]]


@pytest.mark.parametrize(("config", "message"), [
    ('max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 8 ] } ]',
     "input 'INPUT0': the configuration's dims [8] after the batch axis (max_batch_size > 0) make the shape "
     "[-1, 8], but the model's graph has [-1, 16]"),
    ('max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]',
     "input 'INPUT0': the configuration says TYPE_FP32, the model's graph has TYPE_INT32"),
    ('max_batch_size: 8 input [ { name: "NOPE" data_type: TYPE_INT32 dims: [ 16 ] } ]',
     "input 'NOPE': the model has no such input (it has INPUT0, INPUT1)"),
    ('max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ] '
     'output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]',
     "the configuration declares 1 inputs, the model takes 2 (not declared: INPUT1)"),
    ('max_batch_size: 8 output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]',
     "output 'OUTPUT0': the configuration's dims [-1]"),
    ("max_batch_size: 2 dynamic_batching { preferred_batch_size: [ 4 ] }", "preferred_batch_size [4] above"),
])
def test_a_config_that_does_not_fit_the_graph_names_both(tmp_path: Path, config: str, message: str) -> None:
    model_dir(tmp_path, "m", config)
    assert message in reason(tmp_path, "m")


def test_a_batch_size_on_a_model_that_cannot_batch_is_refused(tmp_path: Path) -> None:
    model_dir(tmp_path, "fixed", "max_batch_size: 8", lambda p: add_model(p, shape=(2, 4)))
    assert "max_batch_size is 8 but the model does not support batching" in reason(tmp_path, "fixed")
    (tmp_path / "fixed" / "config.pbtxt").write_text(
        'max_batch_size: 8 input [ { name: "a" data_type: TYPE_FP32 dims: [ 4 ] }, '
        '{ name: "b" data_type: TYPE_FP32 dims: [ 4 ] } ] output [ { name: "sum" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    assert "the graph's first dimension must be dynamic (-1), but the graph has [2, 4]" in reason(tmp_path, "fixed")


def test_reshape_runs_between_the_client_and_the_graph(tmp_path: Path) -> None:
    model_dir(tmp_path, "densenet_onnx", DENSENET_CONFIG, densenet_like_model)
    (tmp_path / "densenet_onnx" / "densenet_labels.txt").write_text("".join(f"c{i}\n" for i in range(1000)))
    version = ready(tmp_path, "densenet_onnx")
    assert [s.shape for s in version.signature.inputs + version.signature.outputs] == [(3, 224, 224), (1000,)]
    assert version.signature.output_labels["fc6_1"][999] == "c999"
    (tmp_path / "densenet_onnx" / "densenet_labels.txt").unlink()
    assert "densenet_labels.txt: cannot read labels" in reason(tmp_path, "densenet_onnx")


def test_default_model_filename_and_a_refused_platform_beside_a_working_model(tmp_path: Path) -> None:
    add_sub_model(tmp_path / "named" / "1" / "net.onnx")
    (tmp_path / "named" / "config.pbtxt").write_text('default_model_filename: "net.onnx"')
    model_dir(tmp_path, "graphdef", 'platform: "tensorflow_graphdef"')

    async def run() -> list[tuple[str, str, State, str]]:
        repo = Repository(tmp_path, CPU, Metrics())
        await repo.load_all()
        try:
            return list(repo.index())
        finally:
            await repo.close()

    index = {name: (state, why) for name, _, state, why in asyncio.run(run())}
    assert index["named"] == (State.READY, "")
    assert index["graphdef"][0] is State.UNAVAILABLE and "'tensorflow_graphdef' is not served" in index["graphdef"][1]


def test_gpu_instances_without_cuda_fall_back_visibly_or_fail_when_strict(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    model_dir(tmp_path, "simple", add_sub_config("simple", "TYPE_INT32")
              + "instance_group [ { kind: KIND_GPU count: 1 gpus: [ 1 ] } ]")
    with caplog.at_level(logging.WARNING):
        version = ready(tmp_path, "simple")
    assert version.providers == ("CPUExecutionProvider",) and "CUDAExecutionProvider" in caplog.text
    assert version.config.instance_groups == (InstanceGroup("simple_0", "KIND_GPU", 1, (1,)),)

    async def strict() -> str:
        repo = Repository(tmp_path, Settings(strict_providers=True), Metrics())
        try:
            return (await repo.load("simple")).reason
        finally:
            await repo.close()

    assert "CUDAExecutionProvider" in asyncio.run(strict())


# ------------------------------------------------------------------------------------------- warm-up


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, np.ndarray]]:
    """The feeds of every session.run the load makes (warm-up runs, as the repository creates sessions)."""
    seen: list[dict[str, np.ndarray]] = []
    create_session = runtime.create_session

    def counting(*args: Any, **kwargs: Any) -> tuple[ort.InferenceSession, list[str]]:
        session, providers = create_session(*args, **kwargs)
        run = session.run

        def recorded(names: Any, feeds: dict[str, np.ndarray]) -> Any:
            seen.append(feeds)
            return run(names, feeds)

        session.run = recorded
        return session, providers

    monkeypatch.setattr(runtime, "create_session", counting)
    return seen


ONE_CPU_INSTANCE = "instance_group [ { kind: KIND_CPU count: 1 } ]\n"


def warmup(name: str, batch_size: int, count: int, data: str, type_name: str = "TYPE_STRING", dims: str = "16"
           ) -> str:
    inputs = " ".join(f'inputs {{ key: "{i}" value: {{ data_type: {type_name} dims: [ {dims} ] {data} }} }}'
                      for i in ("INPUT0", "INPUT1"))
    return f'model_warmup [ {{ name: "{name}" batch_size: {batch_size} count: {count} {inputs} }} ]\n'


def test_simple_string_warms_up_by_default(tmp_path: Path, runs: list[dict[str, np.ndarray]]) -> None:
    model_dir(tmp_path, "simple_string", add_sub_config("simple_string", "TYPE_STRING") + ONE_CPU_INSTANCE,
              string_add_sub_model)
    ready(tmp_path, "simple_string")
    [feeds] = runs
    assert feeds["INPUT0"].tolist() == [["0"] * 16]  # "0", which its Cast takes; "" would fail


def test_zero_data_for_strings_is_empty_strings_as_triton(tmp_path: Path, runs: list[dict[str, np.ndarray]]) -> None:
    config = (add_sub_config("simple_string", "TYPE_STRING") + ONE_CPU_INSTANCE
              + warmup("zeros", 1, 0, "zero_data: true"))
    model_dir(tmp_path, "simple_string", config, string_add_sub_model)
    why = reason(tmp_path, "simple_string")
    assert "warm-up sample 'zeros' failed:" in why and runs[0]["INPUT0"].tolist() == [[""] * 16]


def test_input_data_file_is_read_from_the_warmup_folder(tmp_path: Path, runs: list[dict[str, np.ndarray]]) -> None:
    config = (add_sub_config("simple_string", "TYPE_STRING") + ONE_CPU_INSTANCE
              + warmup("digits", 2, 3, 'input_data_file: "digits"'))
    directory = model_dir(tmp_path, "simple_string", config, string_add_sub_model)
    (directory / "warmup").mkdir()
    (directory / "warmup" / "digits").write_bytes(b"".join(struct.pack("<I", len(str(i))) + str(i).encode()
                                                           for i in range(16)))
    version = ready(tmp_path, "simple_string")
    assert len(runs) == 3  # count 3, one instance
    assert runs[0]["INPUT1"].shape == (2, 16) and runs[0]["INPUT1"][1].tolist() == [str(i) for i in range(16)]
    assert version.config.model_warmup is not None and version.config.model_warmup[0].count == 3
    (directory / "warmup" / "digits").write_bytes(b"\x05\x00\x00\x00ab")
    assert "input_data_file 'digits': contents: BYTES element 0 runs past the end" in reason(tmp_path, "simple_string")
    (directory / "warmup" / "digits").unlink()
    assert "input_data_file: cannot read" in reason(tmp_path, "simple_string")


def test_numeric_input_data_file_zero_and_random_data(tmp_path: Path, runs: list[dict[str, np.ndarray]]) -> None:
    base = add_sub_config("simple", "TYPE_INT32") + ONE_CPU_INSTANCE
    directory = model_dir(tmp_path, "simple", base + warmup("file", 1, 0, 'input_data_file: "ints"', "TYPE_INT32"))
    (directory / "warmup").mkdir()
    (directory / "warmup" / "ints").write_bytes(np.arange(20, dtype="<i4").tobytes())  # extra bytes are left
    ready(tmp_path, "simple")
    assert runs[-1]["INPUT0"].tolist() == [list(range(16))]
    (directory / "warmup" / "ints").write_bytes(b"\x00" * 10)
    assert "holds 10 bytes, the sample needs 64 (INT32 [16])" in reason(tmp_path, "simple")
    for data in ("zero_data: true", "random_data: true"):
        runs.clear()
        (directory / "config.pbtxt").write_text(base + warmup("w", 8, 2, data, "TYPE_INT32"))
        ready(tmp_path, "simple")
        assert len(runs) == 2 and runs[0]["INPUT0"].shape == (8, 16)
        assert runs[0]["INPUT0"].any() == (data == "random_data: true")


def test_batch_size_zero_skips_a_sample(tmp_path: Path, runs: list[dict[str, np.ndarray]]) -> None:
    model_dir(tmp_path, "simple", add_sub_config("simple", "TYPE_INT32") + ONE_CPU_INSTANCE
              + warmup("skipped", 0, 5, "zero_data: true", "TYPE_INT32"))
    ready(tmp_path, "simple")
    assert runs == []  # as Triton: no warm-up request at all


@pytest.mark.parametrize(("sample", "message"), [
    (warmup("big", 9, 0, "zero_data: true", "TYPE_INT32"), "batch_size 9 is above max_batch_size 8"),
    (warmup("typed", 1, 0, "zero_data: true", "TYPE_FP32"), "data_type TYPE_FP32, but the input is TYPE_INT32"),
    ('model_warmup [ { name: "half" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_INT32 '
     'dims: [ 16 ] zero_data: true } } } ]', "model_warmup 'half': no data for input INPUT1"),
    (warmup("dims", 1, 0, "zero_data: true", "TYPE_INT32", "-1"), "warm-up needs every dimension given"),
    (warmup("shape", 1, 0, "zero_data: true", "TYPE_INT32", "8"), "dims [8] make the shape [1, 8], which the input"),
    ('model_warmup [ { name: "odd" batch_size: 1 inputs { key: "X" value: { data_type: TYPE_INT32 '
     'dims: [ 1 ] zero_data: true } } } ]', "input 'X': the model has no such input"),
    (warmup("escape", 1, 0, 'input_data_file: "../config.pbtxt"', "TYPE_INT32"), "must name a file inside"),
])
def test_a_warmup_sample_that_does_not_fit_is_refused(tmp_path: Path, sample: str, message: str) -> None:
    model_dir(tmp_path, "simple", add_sub_config("simple", "TYPE_INT32") + sample)
    assert message in reason(tmp_path, "simple")
