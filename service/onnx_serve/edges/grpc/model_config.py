"""The effective configuration of a model version, as Triton's ModelConfig message."""

from __future__ import annotations

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
    for spec in version.signature.inputs:
        out.input.add(name=spec.name, data_type=mc.DataType.Value(_type_name(spec.datatype)),
                      dims=spec.shape[1:] if batched else spec.shape)
    for spec in version.signature.outputs:
        out.output.add(name=spec.name, data_type=mc.DataType.Value(_type_name(spec.datatype)),
                       dims=spec.shape[1:] if batched else spec.shape,
                       label_filename=config.labels or "")
    if batched and config.dynamic_batching is not None:
        batching = config.dynamic_batching
        db = out.dynamic_batching
        db.preferred_batch_size.extend(batching.preferred_batch_size)
        db.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
        db.default_queue_policy.max_queue_size = batching.max_queue_size
        db.default_queue_policy.default_timeout_microseconds = batching.default_timeout_microseconds
    on_gpu = any(p != "CPUExecutionProvider" for p in version.providers)
    out.instance_group.add(name=f"{version.name}_0", count=config.instance_count,
                           kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU)
    params = {
        "execution_providers": ",".join(version.providers),
        "requested_execution_providers": ",".join(config.execution_providers or ()) or "server default",
        "oversized_request": config.oversized_request,
        "graph_optimization_level": config.session.graph_optimization_level,
    }
    if config.preprocess is not None:
        params["preprocess"] = repr(config.preprocess)
    for key, value in params.items():
        out.parameters[key].string_value = value
    return out


def _type_name(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
