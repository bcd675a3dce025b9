"""The data plane called directly, as every edge calls it: results, errors, and the accounting it records
once (Prometheus series, Triton-style statistics) in the same units for infer and classify; and a version
pinned for the whole call, so a reload or unload never retires it under a request."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from onnx_serve.core.dataplane import DataPlane, EncodedImage, RawImage, RequestedOutput
from onnx_serve.core.errors import Internal, InvalidArgument, NotFound, ServeError
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import Repository
from onnx_serve.core.runtime import Signature
from onnx_serve.core.settings import Settings
from PIL import Image

from tests.helpers.serving import add_model, conv_classifier_model, slow_model

CONV_CONFIG = """\
max_batch_size: 8
preprocess: {color_mode: L, resize: exact, width: 8, height: 8, invert: false}
labels: labels.txt
"""


def build_repository(root: Path, with_slow_model: bool) -> Path:
    add_model(root / "add" / "1" / "model.onnx")
    conv_classifier_model(root / "conv" / "1" / "model.onnx", classes=3, size=8)
    (root / "conv" / "config.yaml").write_text(CONV_CONFIG)
    (root / "conv" / "labels.txt").write_text("zero\none\ntwo\n")
    if with_slow_model:  # its warm-up alone takes a while: only for the tests that keep calls in flight
        slow_model(root / "slow" / "1" / "model.onnx", milliseconds=150)
    return root


@asynccontextmanager
async def serving(root: Path, with_slow_model: bool = False) -> AsyncIterator[DataPlane]:
    metrics = Metrics()
    settings = Settings(execution_providers=("CPUExecutionProvider",))
    repository = Repository(build_repository(root, with_slow_model), settings, metrics)
    await repository.load_all()
    data_plane = DataPlane(repository, metrics, max_elements=1 << 20)
    data_plane.started = True
    try:
        yield data_plane
    finally:
        await repository.close()
        data_plane.close()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    async with serving(tmp_path) as data_plane:
        yield data_plane


@pytest.fixture
async def slow_plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    async with serving(tmp_path, with_slow_model=True) as data_plane:
        yield data_plane


def sample(plane: DataPlane, name: str, **labels: str) -> float:
    return plane.metrics.registry.get_sample_value(name, labels) or 0.0


def png(color: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), color).save(out, "PNG")
    return out.getvalue()


def ones(rows: int) -> dict[str, np.ndarray]:
    return {"a": np.ones((rows, 4), np.float32), "b": np.full((rows, 4), 2, np.float32)}


async def test_infer_answers_numpy_and_accounts_one_request(plane: DataPlane) -> None:
    result = await plane.infer("add", "", ones(3), request_id="r-1")
    assert (result.model_name, result.model_version, result.request_id) == ("add", "1", "r-1")
    [(spec, array)] = result.outputs
    assert spec.name == "sum" and spec.datatype == "FP32"
    np.testing.assert_array_equal(array, np.full((3, 4), 3, np.float32))
    assert sample(plane, "onnx_serve_requests_total", model="add", version="1", api="infer", code="OK") == 1
    assert sample(plane, "onnx_serve_request_duration_seconds_count", model="add", version="1", api="infer") == 1
    assert sample(plane, "onnx_serve_queue_duration_seconds_count", model="add", version="1") == 1
    assert sample(plane, "onnx_serve_inferences_total", model="add", version="1") == 3
    assert sample(plane, "onnx_serve_inflight_requests", model="add") == 0
    [stats] = plane.statistics("add")
    assert (stats.stats.success.count, stats.stats.fail.count, stats.stats.inference_count) == (1, 0, 3)


async def test_infer_through_a_decoder_sees_the_pinned_signature(plane: DataPlane) -> None:
    seen: list[Signature] = []

    def decode(signature: Signature) -> dict[str, np.ndarray]:
        seen.append(signature)
        return ones(1)

    result = await plane.infer("add", "1", decode, [RequestedOutput("sum")])
    assert [s.name for s in seen[0].inputs] == ["a", "b"] and len(result.outputs) == 1


@pytest.mark.parametrize(("inputs", "message"), [
    ({"a": np.ones((1, 4), np.float32)}, "missing input b"),
    ({**ones(1), "c": np.ones((1, 4), np.float32)}, "input 'c': the model has no such input"),
    ({"a": np.ones((1, 5), np.float32), "b": np.ones((1, 5), np.float32)}, "shape [1, 5] does not match"),
    ({"a": np.ones((1, 4), np.int32), "b": np.ones((1, 4), np.int32)}, "datatype INT32 does not match"),
])
async def test_bad_inputs_fail_and_count_once(plane: DataPlane, inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        await plane.infer("add", "", inputs)
    assert sample(plane, "onnx_serve_requests_total", model="add", version="1", api="infer",
                  code="INVALID_ARGUMENT") == 1
    assert sample(plane, "onnx_serve_requests_total", model="add", version="1", api="infer", code="OK") == 0
    [stats] = plane.statistics("add")
    assert (stats.stats.success.count, stats.stats.fail.count) == (0, 1)
    assert sample(plane, "onnx_serve_inflight_requests", model="add") == 0


@pytest.mark.parametrize(("parameters", "outputs", "message"), [
    ({"nope": 1}, [], "unknown request parameter 'nope'"),
    ({"timeout": -5}, [], "parameters.timeout"),
    ({"timeout": True}, [], "parameters.timeout"),
    ({}, [RequestedOutput("other")], "requested output 'other'"),
    ({}, [RequestedOutput("sum", {"classification": -3})], "parameter 'classification' must be a whole number"),
    ({}, [RequestedOutput("sum", {"shared_memory_region": "r"})], "parameter 'shared_memory_region' is not supported"),
    ({}, [RequestedOutput("sum"), RequestedOutput("sum")], "requested output 'sum': asked for twice"),
    ({}, [RequestedOutput("sum")] * 10_000, "requested output 'sum': asked for twice"),  # no amplified answer
])
async def test_bad_parameters_and_outputs(plane: DataPlane, parameters: dict[str, int], outputs: list[RequestedOutput],
                                          message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await plane.infer("add", "", ones(1), outputs, parameters=parameters)


async def test_unknown_models_are_counted_as_one_unknown_series_without_statistics(plane: DataPlane) -> None:
    for name in ("ghost", *(f"ghost-{i}" for i in range(150))):
        with pytest.raises(NotFound, match=f"^Request for unknown model: '{name}' is not found$"):
            await plane.infer(name, "", ones(1))
    assert sample(plane, "onnx_serve_requests_total", model="(unknown)", version="", api="infer",
                  code="NOT_FOUND") == 151
    assert sample(plane, "onnx_serve_requests_total", model="ghost", version="", api="infer", code="NOT_FOUND") == 0
    assert sample(plane, "onnx_serve_inflight_requests", model="(unknown)") == 0
    labels = {sample.labels.get("model") for family in plane.metrics.registry.collect() for sample in family.samples}
    assert not any(label and label.startswith("ghost") for label in labels)
    with pytest.raises(NotFound):
        plane.statistics("ghost")


async def test_a_bug_becomes_an_opaque_internal_error_with_the_request_id(plane: DataPlane,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(signature: Signature) -> dict[str, np.ndarray]:
        raise RuntimeError("secret detail")

    with pytest.raises(Internal) as excinfo:
        await plane.infer("add", "", broken, request_id="req-9")
    assert str(excinfo.value) == "internal error (request id req-9)"
    assert "secret detail" in caplog.text  # logged with its traceback, never sent
    assert sample(plane, "onnx_serve_requests_total", model="add", version="1", api="infer", code="INTERNAL") == 1


async def test_classify_counts_one_request_and_one_inference_per_image(plane: DataPlane) -> None:
    result = await plane.classify("conv", "", [EncodedImage(png(255)), RawImage(bytes(64), 8, 8, 1)], top_k=2,
                                  request_id="c-1")
    assert result.request_id == "c-1" and len(result.predictions) == 2
    assert all(len(top) == 2 and top[0].label in ("zero", "one", "two") for top in result.predictions)
    assert sample(plane, "onnx_serve_requests_total", model="conv", version="1", api="classify", code="OK") == 1
    assert sample(plane, "onnx_serve_preprocess_duration_seconds_count", model="conv", version="1") == 2
    assert sample(plane, "onnx_serve_queue_duration_seconds_count", model="conv", version="1") == 1
    assert sample(plane, "onnx_serve_inferences_total", model="conv", version="1") == 2
    [stats] = plane.statistics("conv")
    assert (stats.stats.success.count, stats.stats.inference_count) == (1, 2)


async def test_both_apis_use_the_same_units(plane: DataPlane) -> None:
    """A request is one call; an inference is one sample: two rows through infer count as two images do."""
    await plane.infer("conv", "", {"input": np.zeros((2, 1, 8, 8), np.float32)})
    [after_infer] = plane.statistics("conv")
    await plane.classify("conv", "", [EncodedImage(png(0)), EncodedImage(png(9))])
    [after_both] = plane.statistics("conv")
    first = (after_infer.stats.success.count, after_infer.stats.inference_count)
    second = (after_both.stats.success.count - first[0], after_both.stats.inference_count - first[1])
    assert first == second == (1, 2)


async def test_classify_reports_the_first_bad_image_by_index(plane: DataPlane) -> None:
    with pytest.raises(InvalidArgument, match=r"^image 1: "):
        await plane.classify("conv", "", [EncodedImage(png(1)), EncodedImage(b"not an image"), None])
    with pytest.raises(InvalidArgument, match="image 0: neither encoded bytes nor raw pixels"):
        await plane.classify("conv", "", [None])
    with pytest.raises(InvalidArgument, match="no preprocess section"):
        await plane.classify("add", "", [EncodedImage(png(1))])
    assert sample(plane, "onnx_serve_requests_total", model="conv", version="1", api="classify",
                  code="INVALID_ARGUMENT") == 2
    [stats] = plane.statistics("conv")
    assert (stats.stats.success.count, stats.stats.fail.count) == (0, 2)


async def test_a_pinned_version_finishes_its_call_through_an_unload(slow_plane: DataPlane) -> None:
    plane = slow_plane
    call = asyncio.create_task(plane.infer("slow", "", {"x": np.ones((1, 2), np.float32)}))
    await asyncio.sleep(0.03)  # the call has chosen its version and waits on the model
    unload = asyncio.create_task(plane.unload_model("slow"))
    result = await call
    await unload
    assert result.model_version == "1"
    with pytest.raises(ServeError) as excinfo:
        await plane.infer("slow", "", {"x": np.ones((1, 2), np.float32)})
    assert excinfo.value.status_name == "UNAVAILABLE"  # on disk, unloaded


async def test_a_reload_never_retires_a_version_under_its_call(slow_plane: DataPlane) -> None:
    plane = slow_plane
    calls = [asyncio.create_task(plane.infer("slow", "", {"x": np.ones((1, 2), np.float32)})) for _ in range(3)]
    await asyncio.sleep(0.03)
    await plane.load_model("slow")
    assert [r.model_version for r in await asyncio.gather(*calls)] == ["1", "1", "1"]
    assert plane.model_ready("slow")


async def test_metadata_index_and_repository_errors(plane: DataPlane) -> None:
    metadata = plane.model_metadata("add")
    assert (metadata.name, metadata.versions, [s.name for s in metadata.inputs]) == ("add", ["1"], ["a", "b"])
    assert plane.model_ready("add") and not plane.model_ready("add", "7") and not plane.model_ready("ghost")
    assert {(e.name, e.state.value) for e in plane.repository_index()} >= {("add", "READY"), ("conv", "READY")}
    with pytest.raises(InvalidArgument, match="parameters: config not supported"):
        await plane.load_model("add", {"config": "{}"})
    with pytest.raises(NotFound):
        await plane.load_model("ghost")
    with pytest.raises(NotFound, match="no ready version '3'"):
        plane.statistics("add", "3")
    assert plane.ready()
    plane.draining = True
    assert not plane.ready() and plane.live()


async def test_a_cancelled_call_is_counted_cancelled_not_ok(slow_plane: DataPlane) -> None:
    """A client that leaves mid-call (grpc cancels the handler's task) is CANCELLED in the request counter and
    a failure in the statistics, never an OK."""
    plane = slow_plane
    call = asyncio.create_task(plane.infer("slow", "", {"x": np.ones((1, 2), np.float32)}))
    await asyncio.sleep(0.03)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    labels = {"model": "slow", "version": "1", "api": "infer"}
    assert sample(plane, "onnx_serve_requests_total", **labels, code="CANCELLED") == 1
    assert sample(plane, "onnx_serve_requests_total", **labels, code="OK") == 0
    assert sample(plane, "onnx_serve_inflight_requests", model="slow") == 0
    [stats] = plane.statistics("slow")
    assert (stats.stats.success.count, stats.stats.fail.count) == (0, 1)
