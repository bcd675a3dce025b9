"""The effective configuration of a model version, as Triton's ModelConfig message: the config completed from
the graph at load (core/autocomplete.py), so dims, reshape, format, label_filename, max_batch_size,
dynamic_batching, instance groups and warm-up say what serves."""

from __future__ import annotations

import dataclasses
import json

from onnx_serve.core.model_config import ModelConfig, triton_type
from onnx_serve.core.triton_config import dynamic_batching_message
from onnx_serve.core.version import ModelVersion
from onnx_serve.protos.inference import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"


def model_config_proto(version: ModelVersion) -> mc.ModelConfig:
    config = version.config
    batched = version.max_batch_size > 0
    out = mc.ModelConfig(name=version.name, platform=PLATFORM, backend="onnxruntime",
                         max_batch_size=version.max_batch_size, default_model_filename=version.path.name)
    policy = config.version_policy
    if policy.kind == "all":
        out.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        out.version_policy.specific.versions.extend(policy.versions)
    else:
        out.version_policy.latest.num_versions = policy.num_versions
    # Triton's convention: with max_batch_size > 0 the dims leave out the batch axis.
    for tensor in config.inputs:
        added = out.input.add(name=tensor.name, data_type=mc.DataType.Value(triton_type(tensor.datatype)),
                              dims=tensor.dims, format=mc.ModelInput.Format.Value(tensor.format))
        if tensor.reshape is not None:
            added.reshape.SetInParent()
            added.reshape.shape.extend(tensor.reshape)
    for tensor in config.outputs:
        output = out.output.add(name=tensor.name, data_type=mc.DataType.Value(triton_type(tensor.datatype)),
                                dims=tensor.dims, label_filename=tensor.label_filename)
        if tensor.reshape is not None:
            output.reshape.SetInParent()
            output.reshape.shape.extend(tensor.reshape)
    if batched and config.dynamic_batching is not None:  # every knob, priorities and queue policies included
        out.dynamic_batching.CopyFrom(dynamic_batching_message(config.dynamic_batching))
    _instance_groups(out, version)
    _warmup(out, config)
    for key, value in config.parameters:  # config.pbtxt's, as given
        out.parameters[key].string_value = value
    params = {
        "execution_providers": ",".join(version.providers),
        "requested_execution_providers": ",".join(config.execution_providers or ()) or "server default",
        "oversized_request": config.oversized_request,
        "graph_optimization_level": config.session.graph_optimization_level,
    }
    # As JSON, with config.yaml's keys, so that any client can parse it (a Python repr only Python could).
    if config.preprocess is not None:
        params["preprocess"] = json.dumps(dataclasses.asdict(config.preprocess), separators=(",", ":"))
    params["postprocess"] = json.dumps(dataclasses.asdict(config.postprocess), separators=(",", ":"))
    for key, value in params.items():
        if key not in out.parameters:
            out.parameters[key].string_value = value
    return out


def _instance_groups(out: mc.ModelConfig, version: ModelVersion) -> None:
    config = version.config
    if config.instance_groups:  # config.pbtxt's, resolved at load as Triton resolves them
        for group in config.instance_groups:
            out.instance_group.add(name=group.name, kind=mc.ModelInstanceGroup.Kind.Value(group.kind),
                                   count=group.count, gpus=group.gpus)
        return
    on_gpu = any(p != "CPUExecutionProvider" for p in version.providers)
    out.instance_group.add(name=f"{version.name}_0", count=config.instance_count,
                           kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU)


def _warmup(out: mc.ModelConfig, config: ModelConfig) -> None:
    for sample in config.model_warmup or ():
        added = out.model_warmup.add(name=sample.name, batch_size=sample.batch_size, count=sample.count)
        for name, given in sample.inputs:
            warm = mc.ModelWarmup.Input(data_type=triton_type(given.datatype), dims=given.dims)
            if given.source == "input_data_file":
                warm.input_data_file = given.input_data_file
            else:
                setattr(warm, given.source, True)
            added.inputs[name].CopyFrom(warm)
