"""The JSON bodies of the V2 REST metadata, health and Triton extension routes, with the field names of the
KServe V2 REST API and Triton's HTTP extensions (which are the protobuf field names of the gRPC messages)."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from onnx_serve.core.dataplane import IndexEntry, ModelMetadata, ServerMetadata, VersionStatistics
from onnx_serve.core.stats import DURATION_FIELDS, Duration
from onnx_serve.core.version import ModelVersion
from onnx_serve.edges.grpc.model_config import model_config_proto


def dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def server_metadata(metadata: ServerMetadata) -> dict[str, Any]:
    return {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}


def model_metadata(metadata: ModelMetadata) -> dict[str, Any]:
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
            "inputs": tensors(metadata.inputs), "outputs": tensors(metadata.outputs)}


def model_config(version: ModelVersion) -> dict[str, Any]:
    """Triton's model configuration JSON: the ModelConfig message the gRPC edge answers, as Triton writes it
    (proto field names, enums by name, 64-bit integers as numbers, every primitive, repeated and map field even
    at its default, sub-messages and oneof members only when set)."""
    return message_json(model_config_proto(version))


def statistics(found: list[VersionStatistics]) -> dict[str, Any]:
    def duration(d: Duration) -> dict[str, int]:
        return {"count": d.count, "ns": d.ns}

    models = []
    for entry in found:
        stats = entry.stats
        models.append({
            "name": entry.name, "version": entry.version, "last_inference": stats.last_inference_ms,
            "inference_count": stats.inference_count, "execution_count": stats.execution_count,
            "inference_stats": {name: duration(getattr(stats, name)) for name in DURATION_FIELDS},
            "batch_stats": [{"batch_size": size, "compute_input": duration(b.compute_input),
                             "compute_infer": duration(b.compute_infer), "compute_output": duration(b.compute_output)}
                            for size, b in sorted(stats.batches.items())],
        })
    return {"model_stats": models}


def repository_index(entries: list[IndexEntry]) -> list[dict[str, str]]:
    """Triton's index: a JSON array; version, state and reason only where known (as Triton omits them)."""
    index = []
    for entry in entries:
        item = {"name": entry.name}
        if entry.version:
            item["version"] = entry.version
        item["state"] = entry.state.value
        if entry.reason:
            item["reason"] = entry.reason
        index.append(item)
    return index


def message_json(message: Message) -> dict[str, Any]:
    """Protobuf's JSON with always_print_primitive_fields, as Triton prints configs: clients read fields such as
    max_batch_size (0 for a model that does not batch) without checking that they are there."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated
        if (is_message or field.containing_oneof is not None) and not message.HasField(field.name):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _value(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            out[field.name] = [_value(field, item) for item in value]
        else:
            out[field.name] = _value(field, value)
    return out


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        described = field.enum_type.values_by_number.get(value)
        return described.name if described is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value
