"""The committed stubs match protos/, and our KServe V2 protos are wire compatible with tritonclient's:
every message, field, enum and RPC we define exists there with the same name, number, type and label."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import tritonclient.grpc.model_config_pb2 as triton_model_config
import tritonclient.grpc.service_pb2 as triton_service
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from onnx_serve.protos.inference import grpc_service_pb2, model_config_pb2

from tests.helpers.serving import ROOT

OUR_FILES = (grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)
TRITON_POOL = triton_service.DESCRIPTOR.pool


def test_committed_stubs_are_current() -> None:
    result = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def walk_messages(message: Descriptor) -> Iterator[Descriptor]:
    yield message
    for nested in message.nested_types:
        yield from walk_messages(nested)


def all_messages(files: tuple[FileDescriptor, ...]) -> list[Descriptor]:
    return [m for f in files for top in f.message_types_by_name.values() for m in walk_messages(top)]


def all_enums(files: tuple[FileDescriptor, ...]) -> list[EnumDescriptor]:
    enums = [e for f in files for e in f.enum_types_by_name.values()]
    return enums + [e for m in all_messages(files) for e in m.enum_types]


def field_signature(field: FieldDescriptor) -> tuple[object, ...]:
    """What the wire format and the generated code depend on (label = repeated / required / presence)."""
    type_name = field.message_type.full_name if field.message_type else (
        field.enum_type.full_name if field.enum_type else "")
    oneof = field.containing_oneof.name if field.containing_oneof else ""
    return (field.name, field.number, field.type, field.is_repeated, field.is_required, field.has_presence,
            type_name, oneof)


@pytest.mark.parametrize("message", all_messages(OUR_FILES), ids=lambda m: m.full_name)
def test_message_fields_match_tritonclient(message: Descriptor) -> None:
    theirs = TRITON_POOL.FindMessageTypeByName(message.full_name)
    for field in message.fields:
        assert field.number in theirs.fields_by_number, f"{message.full_name}.{field.name} is not in tritonclient's"
        assert field_signature(field) == field_signature(theirs.fields_by_number[field.number])
    if message.GetOptions().map_entry:
        assert theirs.GetOptions().map_entry


@pytest.mark.parametrize("enum", all_enums(OUR_FILES), ids=lambda e: e.full_name)
def test_enum_values_match_tritonclient(enum: EnumDescriptor) -> None:
    theirs = TRITON_POOL.FindEnumTypeByName(enum.full_name)
    assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs.values}


def test_every_kserve_message_and_rpc_is_defined() -> None:
    ours = {m.full_name for m in all_messages(OUR_FILES)}
    required = {f"inference.{name}" for name in (
        "ServerLiveRequest", "ServerReadyRequest", "ModelReadyRequest", "ServerMetadataRequest",
        "ModelMetadataRequest", "ModelInferRequest", "ModelInferResponse", "ModelStreamInferResponse",
        "ModelConfigRequest", "ModelStatisticsRequest", "RepositoryIndexRequest", "RepositoryModelLoadRequest",
        "RepositoryModelUnloadRequest", "InferParameter", "InferTensorContents", "ModelConfig")}
    assert required <= ours


def test_rpcs_match_tritonclient() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in ours.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
        "RepositoryModelUnload"}
    for method in ours.methods:
        other = theirs.methods_by_name.get(method.name)
        assert other is not None, f"tritonclient has no RPC {method.name}"
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (other.client_streaming, other.server_streaming)


def test_both_stub_sets_live_in_one_process_and_interoperate() -> None:
    # Our descriptors sit in a private pool, so tritonclient's (default pool) load beside them.
    assert grpc_service_pb2.DESCRIPTOR.pool is not TRITON_POOL
    ours = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="2", id="r1")
    tensor = ours.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    ours.parameters["timeout"].int64_param = 7
    ours.raw_input_contents.append(b"\x00" * 8)
    theirs = triton_service.ModelInferRequest.FromString(ours.SerializeToString())
    assert (theirs.model_name, theirs.model_version, theirs.id) == ("m", "2", "r1")
    assert list(theirs.inputs[0].shape) == [1, 2]
    assert list(theirs.inputs[0].contents.fp32_contents) == [1.5, -2.0]
    assert theirs.parameters["timeout"].int64_param == 7
    back = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == ours

    config = triton_model_config.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", data_type=triton_model_config.TYPE_FP16, dims=[3, -1])
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    ours_config = model_config_pb2.ModelConfig.FromString(config.SerializeToString())
    assert ours_config.input[0].data_type == model_config_pb2.TYPE_FP16
    assert list(ours_config.dynamic_batching.preferred_batch_size) == [4, 8]
