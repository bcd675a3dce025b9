"""ModelConfig's `preprocess` and `postprocess` parameters are JSON objects with config.yaml's keys, which any
client parses (they were Python reprs)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import yaml
from onnx_serve.protos.inference import grpc_service_pb2 as v2
from onnx_serve.protos.inference import grpc_service_pb2_grpc as v2_grpc

from tests.helpers.inprocess import CPU_ONLY, in_process_server
from tests.helpers.serving import BUNDLED_MODELS


def test_preprocess_and_postprocess_parameters_are_json_with_the_config_keys() -> None:
    written = yaml.safe_load((BUNDLED_MODELS / "mnist-cnn" / "config.yaml").read_text())
    with in_process_server(Path(BUNDLED_MODELS), execution_providers=CPU_ONLY, metrics_port=-1,
                           http_port=-1) as server, grpc.insecure_channel(server.url) as channel:
        config = v2_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
            v2.ModelConfigRequest(name="mnist-cnn"), timeout=10).config
    preprocess = json.loads(config.parameters["preprocess"].string_value)
    postprocess = json.loads(config.parameters["postprocess"].string_value)
    assert set(preprocess) == set(written["preprocess"]) | {"crop_fraction"}  # every key, given or defaulted
    for key, value in written["preprocess"].items():
        assert preprocess[key] == value, key
    assert postprocess == written["postprocess"]
