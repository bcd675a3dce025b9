"""Faults stay with the model that has them: a model failing at run time, a corrupt or missing model file, an
execution provider that is missing. Each is reported, the other models keep serving, and a reload recovers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import in_process_server
from tests.helpers.metrics import value
from tests.helpers.serving import add_model, save_model, tensor


def reshape_model(path: Path) -> Path:
    """y = Reshape(x, shape): fails at run time when `shape` does not fit x."""
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
                              [tensor("x", TensorProto.FLOAT, [2, 4]), tensor("shape", TensorProto.INT64, [2])],
                              [tensor("y", TensorProto.FLOAT, [None, None])])
    return save_model(graph, path)


def reshape_inputs(shape: list[int]) -> list[tc.InferInput]:
    x = tc.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4))
    s = tc.InferInput("shape", [2], "INT64")
    s.set_data_from_numpy(np.array(shape, dtype=np.int64))
    return [x, s]


def add_ok(client: tc.InferenceServerClient, model: str = "add") -> bool:
    a = tc.InferInput("a", [1, 4], "FP32")
    a.set_data_from_numpy(np.ones((1, 4), np.float32))
    b = tc.InferInput("b", [1, 4], "FP32")
    b.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer(model, [a, b]).as_numpy("sum").tolist() == [[2.0] * 4]


def test_a_run_time_failure_is_reported_and_isolated(tmp_path: Path) -> None:
    reshape_model(tmp_path / "reshape" / "1" / "model.onnx")
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        assert client.infer("reshape", reshape_inputs([4, 2])).as_numpy("y").shape == (4, 2)
        with pytest.raises(InferenceServerException) as failure:
            client.infer("reshape", reshape_inputs([3, 3]), request_id="bad-reshape")
        assert failure.value.status() == "StatusCode.INTERNAL"
        assert "model execution failed" in failure.value.message() and "Traceback" not in failure.value.message()
        assert client.is_server_live() and add_ok(client)
        assert client.infer("reshape", reshape_inputs([8, 1])).as_numpy("y").shape == (8, 1)
        assert "bad-reshape" in server.log()  # the error line carries the request id
        stats = client.get_inference_statistics("reshape").model_stats[0].inference_stats
        assert stats.success.count == 2 and stats.fail.count == 1


def test_corrupt_and_missing_files_recover_by_reload(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x01garbage, not a protobuf" * 10)
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["broken"].state == "UNAVAILABLE" and "cannot load the model" in index["broken"].reason
        assert index["empty"].state == "UNAVAILABLE" and "file not found" in index["empty"].reason
        assert not client.is_server_ready() and add_ok(client)
        with pytest.raises(InferenceServerException) as unavailable:
            add_ok(client, "broken")
        assert unavailable.value.status() == "StatusCode.UNAVAILABLE"
        assert value(server.scrape(), "onnx_serve_model_ready", model="broken") == 0

        shutil.copy(tmp_path / "add" / "1" / "model.onnx", tmp_path / "broken" / "1" / "model.onnx")
        shutil.copy(tmp_path / "add" / "1" / "model.onnx", tmp_path / "empty" / "1" / "model.onnx")
        client.load_model("broken")
        client.load_model("empty")
        assert add_ok(client, "broken") and add_ok(client, "empty")
        assert client.is_server_ready()
        assert value(server.scrape(), "onnx_serve_model_ready", model="broken") == 1


def test_missing_provider_falls_back_visibly(tmp_path: Path) -> None:
    add_model(tmp_path / "accelerated" / "1" / "model.onnx")
    (tmp_path / "accelerated" / "config.yaml").write_text("execution_providers: [tensorrt, cpu]\n")
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        assert add_ok(client, "accelerated")
        parameters = client.get_model_config("accelerated").config.parameters
        assert parameters["execution_providers"].string_value == "CPUExecutionProvider"
        assert "TensorrtExecutionProvider" in parameters["requested_execution_providers"].string_value
        assert "TensorrtExecutionProvider unavailable" in server.log()
        text = server.scrape()
        assert value(text, "onnx_serve_execution_provider_info", model="accelerated",
                     provider="CPUExecutionProvider") == 1
        assert value(text, "onnx_serve_execution_provider_info", provider="TensorrtExecutionProvider") == 0


def test_strict_providers_fail_only_that_model_until_fixed(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    add_model(tmp_path / "accelerated" / "1" / "model.onnx")
    config = tmp_path / "accelerated" / "config.yaml"
    config.write_text("execution_providers: [cuda]\n")
    with in_process_server(tmp_path, strict_providers=True, execution_providers=("CPUExecutionProvider",)) as server, \
            tc.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["accelerated"].state == "UNAVAILABLE"
        assert "CUDAExecutionProvider" in index["accelerated"].reason
        assert index["add"].state == "READY" and add_ok(client)
        config.write_text("execution_providers: [cpu]\n")
        client.load_model("accelerated")
        assert add_ok(client, "accelerated") and client.is_server_ready()


def test_a_preprocess_config_that_does_not_fit_the_model_fails_at_load(tmp_path: Path) -> None:
    from tests.helpers.serving import conv_classifier_model

    conv_classifier_model(tmp_path / "conv" / "1" / "model.onnx", size=8)
    (tmp_path / "conv" / "config.yaml").write_text("preprocess: {color_mode: L, width: 28, height: 28}\n")
    add_model(tmp_path / "add" / "1" / "model.onnx")
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["conv"].state == "UNAVAILABLE"
        assert "preprocess gives FP32 [1, 1, 28, 28]" in index["conv"].reason
        assert add_ok(client)


def test_a_failed_reload_keeps_the_model_serving(tmp_path: Path) -> None:
    """RepositoryModelLoad with a broken config.yaml, then SIGHUP with a broken new version: both fail and are
    reported, and version 1 serves on, READY, through both."""
    add_model(tmp_path / "add" / "1" / "model.onnx")
    config = tmp_path / "add" / "config.yaml"
    with in_process_server(tmp_path) as server, tc.InferenceServerClient(server.url) as client:
        assert add_ok(client) and client.is_server_ready()
        config.write_text("max_batch_size: lots\n")
        with pytest.raises(InferenceServerException) as failure:
            client.load_model("add")
        assert failure.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to load 'add'" in failure.value.message() and "max_batch_size" in failure.value.message()
        assert client.is_model_ready("add") and client.is_model_ready("add", "1") and client.is_server_ready()
        assert add_ok(client)
        (row,) = client.get_model_repository_index().models
        assert (row.name, row.version, row.state) == ("add", "1", "READY")
        assert "reload failed" in row.reason and "max_batch_size" in row.reason
        text = server.scrape()
        assert value(text, "onnx_serve_model_load_failures_total", model="add") == 1
        assert value(text, "onnx_serve_model_ready", model="add", version="1") == 1
        assert "ERROR onnx_serve.core.repository: model add: reload failed" in server.log()

        config.unlink()
        (tmp_path / "add" / "2").mkdir()
        (tmp_path / "add" / "2" / "model.onnx").write_bytes(b"\x08\x01garbage, not a protobuf" * 10)
        server.server.call(server.server.reload(), timeout_s=30)  # what SIGHUP runs
        assert client.is_model_ready("add") and client.is_server_ready() and add_ok(client)
        rows = {m.version: m for m in client.get_model_repository_index().models}
        assert rows["1"].state == "READY" and rows["2"].state == "UNAVAILABLE"
        assert "cannot load the model" in rows["2"].reason
        assert not client.is_model_ready("add", "2")
        assert value(server.scrape(), "onnx_serve_model_load_failures_total", model="add") == 2
