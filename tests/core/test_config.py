"""Model config schema: defaults, Triton-named knobs, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx_serve.core.errors import ConfigError
from onnx_serve.core.model_config import DynamicBatching, VersionPolicy, load_model_config, parse_model_config
from onnx_serve.core.settings import cpu_quota

WHERE = "models/m/config.yaml"


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_model_config(tmp_path / "config.yaml")
    assert config.max_batch_size is None and config.dynamic_batching == DynamicBatching()
    assert config.version_policy == VersionPolicy("latest", 1) and config.preprocess is None


def test_every_knob_is_read() -> None:
    config = parse_model_config({
        "name": "m", "max_batch_size": 8, "oversized_request": "split", "instance_group": {"count": 2},
        "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [4, 2],
                             "max_queue_size": 10, "default_timeout_microseconds": 7},
        "version_policy": {"specific": {"versions": [1, 3]}}, "execution_providers": ["cuda", "CPUExecutionProvider"],
        "session": {"graph_optimization_level": "basic", "intra_op_threads": 3, "allow_spinning": True},
        "labels": "labels.txt", "postprocess": {"softmax": True, "top_k": 3}, "limits": {"max_images_per_request": 4},
        "preprocess": {"color_mode": "RGB", "width": 224, "height": 224, "resize": "shorter_side",
                       "crop_fraction": 0.875, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }, WHERE, "m")
    assert config.max_batch_size == 8 and config.oversized_request == "split" and config.instance_count == 2
    assert config.dynamic_batching == DynamicBatching(500, (2, 4), 10, 7)
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    assert config.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert config.session.intra_op_threads == 3 and config.session.allow_spinning
    assert config.postprocess.top_k == 3 and config.limits.max_images_per_request == 4
    assert config.preprocess is not None and config.preprocess.output_shape == (3, 224, 224)


def test_batching_can_be_switched_off() -> None:
    assert parse_model_config({"dynamic_batching": False}, WHERE, "m").dynamic_batching is None


def test_version_policies_select() -> None:
    assert VersionPolicy("latest", 2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicy("all").select([3, 1]) == [1, 3]


@pytest.mark.parametrize(("raw", "message"), [
    ({"max_batch_szie": 4}, "max_batch_szie: unknown key"),
    ({"name": "other"}, "name: 'other' differs from the model directory 'm'"),
    ({"max_batch_size": -1}, "max_batch_size: expected an integer >= 0"),
    ({"max_batch_size": True}, "max_batch_size: expected an integer"),
    ({"dynamic_batching": {"max_queue_delay_microseconds": "5"}}, "dynamic_batching.max_queue_delay_microseconds"),
    ({"dynamic_batching": {"preferred_batch_size": [0]}}, "dynamic_batching.preferred_batch_size"),
    ({"dynamic_batching": {"delay": 5}}, "dynamic_batching.delay: unknown key"),
    ({"instance_group": {"count": 0}}, "instance_group.count"),
    ({"version_policy": {"latest": {}, "all": {}}}, "set exactly one of latest, all, specific"),
    ({"version_policy": {"specific": {"versions": []}}}, "version_policy.specific.versions"),
    ({"execution_providers": "cuda"}, "execution_providers: expected a non-empty list"),
    ({"session": {"graph_optimization_level": "max"}}, "session.graph_optimization_level"),
    ({"oversized_request": "drop"}, "oversized_request: expected one of reject, split"),
    ({"preprocess": {"layout": "CHWN"}}, "preprocess.layout"),
    ({"postprocess": {"top_k": 0}}, "postprocess.top_k"),
    ([1, 2], "the file: expected a mapping"),
])
def test_errors_name_the_file_and_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_model_config(raw, WHERE, "m")
    assert str(error.value).startswith(WHERE) and message in str(error.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m" / "config.yaml"
    path.parent.mkdir()
    path.write_text("max_batch_size: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(path)


def test_cpu_quota_is_at_least_one_and_at_most_the_affinity() -> None:
    import os

    assert 1 <= cpu_quota() <= len(os.sched_getaffinity(0))
