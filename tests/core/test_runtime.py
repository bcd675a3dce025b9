"""onnx_serve.core.runtime on real ONNX Runtime sessions: which execution providers a session gets (and the
visible fallback to CPU on this CPU-only build), the session options a SessionPlan sets, the V2 signature
read from a graph, and RunnerPool running batches in its worker threads."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx_serve.core.errors import ConfigError, InvalidArgument, ServeError
from onnx_serve.core.model_config import SessionConfig
from onnx_serve.core.runtime import (
    ProviderUnavailable,
    RunnerPool,
    SessionPlan,
    Signature,
    create_session,
    signature_of,
    warmup_feeds,
)
from onnx_serve.types import TensorSpec

from tests.helpers.serving import add_model, conv_classifier_model, identity_model, string_model

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
RUNTIME_LOGGER = "onnx_serve.core.runtime"

needs_cpu_only_build = pytest.mark.skipif(CUDA in ort.get_available_providers(),
                                          reason="this onnxruntime build has the CUDA provider: no fallback to see")


def plan(*providers: str, strict: bool = False, intra_op_threads: int = 1,
         options: SessionConfig | None = None) -> SessionPlan:
    return SessionPlan(providers=providers, strict_providers=strict, options=options or SessionConfig(),
                       intra_op_threads=intra_op_threads)


@pytest.fixture
def add_onnx(tmp_path: Path) -> Path:
    return add_model(tmp_path / "add.onnx")


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == RUNTIME_LOGGER and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------- providers


def test_a_cpu_session_gets_the_cpu_provider_without_a_warning(add_onnx: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        session, providers = create_session(add_onnx, plan(CPU))
    assert providers == [CPU] == session.get_providers()
    assert fallback_warnings(caplog) == []


@needs_cpu_only_build
def test_cuda_requested_on_a_cpu_only_build_falls_back_to_cpu_with_a_warning(
        add_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        session, providers = create_session(add_onnx, plan(CUDA, CPU))
    assert providers == session.get_providers() == [CPU]  # read back from the session, not assumed
    warnings = fallback_warnings(caplog)
    assert len(warnings) == 1
    assert f"execution provider {CUDA} unavailable, falling back to {CPU}" in warnings[0]
    assert str(add_onnx) in warnings[0]
    a = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(session.run(None, {"a": a, "b": a})[0], a * 2)  # the fallback session works


@needs_cpu_only_build
def test_cuda_alone_still_gets_a_cpu_session_with_a_warning(add_onnx: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        _, providers = create_session(add_onnx, plan(CUDA))
    assert providers == [CPU]
    assert len(fallback_warnings(caplog)) == 1


@needs_cpu_only_build
def test_strict_providers_refuses_a_missing_cuda_provider_naming_it(add_onnx: Path) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        create_session(add_onnx, plan(CUDA, CPU, strict=True))
    message = str(caught.value)
    assert message.startswith(f"execution provider(s) {CUDA} not available in this build of onnxruntime")
    assert CPU in message  # the available ones are listed
    assert isinstance(caught.value, ConfigError)  # so a load marks the model UNAVAILABLE with this reason


def test_strict_providers_accepts_providers_that_are_available(add_onnx: Path) -> None:
    _, providers = create_session(add_onnx, plan(CPU, strict=True))
    assert providers == [CPU]


def test_an_unknown_provider_name_falls_back_to_cpu_with_a_warning(add_onnx: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        _, providers = create_session(add_onnx, plan("NoSuchExecutionProvider", CPU))
    assert providers == [CPU]
    assert any("NoSuchExecutionProvider unavailable" in w for w in fallback_warnings(caplog))


def test_strict_providers_refuses_an_unknown_provider_name_naming_it(add_onnx: Path) -> None:
    with pytest.raises(ProviderUnavailable, match=r"execution provider\(s\) NoSuchExecutionProvider, "
                                                  r"AlsoMissingProvider not available"):
        create_session(add_onnx, plan("NoSuchExecutionProvider", "AlsoMissingProvider", CPU, strict=True))


# --------------------------------------------------------------------------------------------- options


def test_the_plan_sets_threads_and_optimization_level(add_onnx: Path) -> None:
    options = SessionConfig(graph_optimization_level="basic", inter_op_threads=2)
    session, _ = create_session(add_onnx, plan(CPU, intra_op_threads=3, options=options))
    applied = session.get_session_options()
    assert applied.intra_op_num_threads == 3
    assert applied.inter_op_num_threads == 2
    assert applied.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert applied.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_inter_op_threads_default_to_one(add_onnx: Path) -> None:
    session, _ = create_session(add_onnx, plan(CPU))
    assert session.get_session_options().inter_op_num_threads == 1


def test_a_corrupt_model_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ConfigError, match=rf"^{path}: ONNX Runtime cannot load the model: "):
        create_session(path, plan(CPU))


def test_a_graph_onnx_runtime_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "complex.onnx", TensorProto.COMPLEX64)
    with pytest.raises(ConfigError, match=r"ONNX Runtime cannot load the model"):
        create_session(path, plan(CPU))


# ------------------------------------------------------------------------------------------- signature


def test_signature_marks_dynamic_axes_minus_one(tmp_path: Path) -> None:
    session, _ = create_session(conv_classifier_model(tmp_path / "conv.onnx", classes=5, size=8), plan(CPU))
    signature = signature_of(session)
    assert signature.inputs == (TensorSpec("input", "FP32", (-1, 1, 8, 8)),)
    assert signature.outputs == (TensorSpec("probabilities", "FP32", (-1, 5)),)
    assert signature.has_batch_axis()
    assert signature.input_by_name == {"input": signature.inputs[0]}
    assert signature.output_index == {"probabilities": 0}


@pytest.mark.parametrize(("shape", "expected"), [
    (["N", 3], (-1, 3)),
    ([None, "width"], (-1, -1)),
    ([2, 2], (2, 2)),
    ([], ()),
])
def test_signature_reads_symbolic_unknown_fixed_and_scalar_shapes(tmp_path: Path, shape: list[int | str | None],
                                                                   expected: tuple[int, ...]) -> None:
    path = identity_model(tmp_path / "identity.onnx", TensorProto.INT64, shape)  # type: ignore[arg-type]
    signature = signature_of(create_session(path, plan(CPU))[0])
    assert signature == Signature((TensorSpec("x", "INT64", expected),), (TensorSpec("y", "INT64", expected),))
    assert signature.has_batch_axis() is (bool(expected) and expected[0] == -1)


@pytest.mark.parametrize(("elem_type", "datatype"), [(TensorProto.BOOL, "BOOL"), (TensorProto.UINT8, "UINT8"),
                                                     (TensorProto.FLOAT16, "FP16"), (TensorProto.DOUBLE, "FP64"),
                                                     (TensorProto.STRING, "BYTES")])
def test_signature_names_v2_datatypes(tmp_path: Path, elem_type: int, datatype: str) -> None:
    path = identity_model(tmp_path / "identity.onnx", elem_type)
    signature = signature_of(create_session(path, plan(CPU))[0])
    assert signature.inputs[0].datatype == datatype == signature.outputs[0].datatype


def test_a_graph_with_a_type_v2_cannot_carry_is_refused(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "bf16.onnx", TensorProto.BFLOAT16)
    session, _ = create_session(path, plan(CPU))  # ONNX Runtime runs it; the V2 API has no bfloat16
    with pytest.raises(ConfigError, match=r"^tensor 'x' has type tensor\(bfloat16\), which onnx-serve cannot serve$"):
        signature_of(session)


def test_warmup_feeds_are_one_sample_of_zeros_or_digit_strings(tmp_path: Path) -> None:
    conv = signature_of(create_session(conv_classifier_model(tmp_path / "conv.onnx"), plan(CPU))[0])
    feeds = warmup_feeds(conv)
    assert list(feeds) == ["input"]
    assert feeds["input"].shape == (1, 1, 8, 8) and feeds["input"].dtype == np.float32
    assert not feeds["input"].any()
    strings = signature_of(create_session(string_model(tmp_path / "strings.onnx"), plan(CPU))[0])
    assert warmup_feeds(strings)["x"].tolist() == ["0"]  # "0": models that parse strings as numbers take it


# ------------------------------------------------------------------------------------------ RunnerPool


async def test_runner_pool_runs_a_batch_and_times_it(add_onnx: Path) -> None:
    sessions = [create_session(add_onnx, plan(CPU))[0] for _ in range(2)]
    pool = RunnerPool(sessions, "add-1")
    try:
        assert pool.count == 2
        first, second = await pool.acquire(), await pool.acquire()
        assert {id(first), id(second)} == {id(s) for s in sessions}
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        b = np.full((3, 4), 10, dtype=np.float32)
        outputs, run_ns = await pool.start(first, {"a": a, "b": b})
        pool.release(first)
        pool.release(second)
        assert len(outputs) == 1
        np.testing.assert_array_equal(outputs[0], a + b)
        assert isinstance(run_ns, int) and run_ns > 0
        assert await pool.acquire() is first  # released instances go back to the idle queue, in order
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "error", "message"),
    [
        pytest.param((4,), (4,), InvalidArgument, r"^the model rejected the input: ", id="wrong-rank-invalid-argument"),
        # Shapes Add cannot broadcast: the run itself fails, which is the server's error, not the client's.
        pytest.param((2, 4), (3, 4), ServeError, r"^model execution failed: ", id="failed-run-serve-error"),
    ],
)
async def test_runner_pool_reports_what_onnx_runtime_refuses(
    add_onnx: Path, a_shape: tuple[int, ...], b_shape: tuple[int, ...], error: type[ServeError], message: str
) -> None:
    pool = RunnerPool([create_session(add_onnx, plan(CPU))[0]], "add-1")
    try:
        session = await pool.acquire()
        with pytest.raises(error, match=message) as caught:
            await pool.start(session, {"a": np.ones(a_shape, np.float32), "b": np.ones(b_shape, np.float32)})
        assert type(caught.value) is error
    finally:
        pool.close()
