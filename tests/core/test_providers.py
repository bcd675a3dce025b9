"""Which execution providers a model runs on, and what the server says about it (issue #17): the default,
`auto`, is the best providers this onnxruntime has, named once at INFO and never a warning; providers asked for
by name (flag, variable, config.yaml, config.pbtxt KIND_GPU) that cannot be had are a warning at each model
load, or a failed load under --strict-providers. Real Repository loads on real ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx_serve.cli import build_parser, settings_from
from onnx_serve.core import runtime
from onnx_serve.core.errors import ConfigError
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.model_config import SessionConfig, parse_model_config
from onnx_serve.core.repository import Repository
from onnx_serve.core.runtime import AUTO_PREFERENCE, ProviderUnavailable, SessionPlan, create_session, create_sessions
from onnx_serve.core.settings import SettingError, Settings, parse_provider_names
from onnx_serve.core.version import State

from tests.helpers.serving import add_model

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
RUNTIME_LOGGER = "onnx_serve.core.runtime"

needs_cpu_only_build = pytest.mark.skipif(CUDA in ort.get_available_providers(),
                                          reason="this onnxruntime build has the CUDA provider: nothing falls back")


@pytest.fixture(autouse=True)
def fresh_auto_choice() -> Iterator[None]:
    """`auto` is resolved once per process: each test starts, and leaves, with it unresolved."""
    runtime.auto_providers.reset()
    yield
    runtime.auto_providers.reset()


def runtime_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == RUNTIME_LOGGER and r.levelno == level]


def load_twice(root: Path, settings: Settings, *names: str) -> None:
    """Loads each model, then reloads it (as SIGHUP or RepositoryModelLoad would)."""
    repository = Repository(root, settings, Metrics())

    async def run() -> None:
        try:
            for _ in range(2):
                for name in names:
                    await repository.load(name)
        finally:
            await repository.close()

    asyncio.run(run())


def served_providers(root: Path, settings: Settings, name: str) -> tuple[State, tuple[str, ...], str]:
    repository = Repository(root, settings, Metrics())

    async def run() -> tuple[State, tuple[str, ...], str]:
        try:
            model = await repository.load(name)
            version = next(iter(model.versions.values()), None)
            return model.state, (version.providers if version else ()), model.reason
        finally:
            await repository.close()

    return asyncio.run(run())


def plan(*providers: str, strict: bool = False) -> SessionPlan:
    return SessionPlan(providers=providers, strict_providers=strict, options=SessionConfig(), intra_op_threads=1)


# ------------------------------------------------------------------------------------------ the setting


def test_the_default_is_auto_spelled_as_no_providers() -> None:
    assert Settings().execution_providers == ()
    resolve = build_parser().parse_args
    assert settings_from(resolve(["serve"]), {}).execution_providers == ()
    assert settings_from(resolve(["serve", "--execution-providers", "AUTO"]), {}).execution_providers == ()
    assert settings_from(resolve(["serve"]), {"ONNX_SERVE_EXECUTION_PROVIDERS": "auto"}).execution_providers == ()
    assert settings_from(resolve(["serve"]), {"ONNX_SERVE_EXECUTION_PROVIDERS": "cuda, cpu"}
                         ).execution_providers == (CUDA, CPU)


def test_auto_stands_alone() -> None:
    with pytest.raises(SettingError, match="'auto' stands alone"):
        parse_provider_names("auto,cpu")


def test_a_model_config_may_say_auto_for_the_server_default() -> None:
    assert parse_model_config({"execution_providers": ["auto"]}, "m/config.yaml", "m").execution_providers is None
    with pytest.raises(ConfigError, match=r"m/config.yaml: execution_providers: 'auto' stands alone"):
        parse_model_config({"execution_providers": ["cuda", "auto"]}, "m/config.yaml", "m")


def test_auto_keeps_cuda_then_cpu_of_what_the_build_lists() -> None:
    assert AUTO_PREFERENCE == (CUDA, CPU)
    expected = tuple(p for p in AUTO_PREFERENCE if p in ort.get_available_providers())
    assert runtime.resolve_providers(()) == expected
    assert runtime.resolve_providers(("TensorrtExecutionProvider",)) == ("TensorrtExecutionProvider",)


# --------------------------------------------------------------------------- the default: auto, no warning


@needs_cpu_only_build
def test_the_default_on_a_cpu_only_build_runs_on_cpu_says_so_once_and_warns_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a", "b"):
        add_model(tmp_path / name / "1" / "model.onnx")
    with caplog.at_level(logging.INFO, logger=RUNTIME_LOGGER):
        load_twice(tmp_path, Settings(), "a", "b")  # two models, each loaded twice
        state, providers, _ = served_providers(tmp_path, Settings(), "a")
    assert state is State.READY and providers == (CPU,)
    assert runtime_records(caplog, logging.WARNING) == []
    said = runtime_records(caplog, logging.INFO)
    assert said == [f"execution providers: {CPU} (auto: the best of {CUDA}, {CPU} that this onnxruntime has; "
                    "--execution-providers chooses)"]


def test_strict_providers_with_auto_loads_on_what_the_build_has(tmp_path: Path) -> None:
    add_model(tmp_path / "a" / "1" / "model.onnx")
    state, providers, reason = served_providers(tmp_path, Settings(strict_providers=True), "a")
    assert state is State.READY, reason
    assert providers[0] == runtime.resolve_providers(())[0]


def test_auto_on_a_gpu_build_without_a_usable_gpu_warns_once_per_process(
        add_onnx: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime-gpu lists CUDA whether or not a GPU is there: the session then runs on CPU."""
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: its sessions may really get it")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER), pytest.warns(UserWarning, match=CUDA):
        sessions, got = create_sessions(add_onnx, plan(), [None, None])
        create_session(add_onnx, plan())
    assert len(sessions) == 2 and got == [CPU]
    warnings = runtime_records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"execution provider {CUDA} is listed by this onnxruntime but cannot run here")
    with pytest.raises(ProviderUnavailable, match=f"requested {CUDA} but the session runs on {CPU}"), \
            pytest.warns(UserWarning, match=CUDA):
        create_session(add_onnx, plan(strict=True))


# ----------------------------------------------------------------- asked for by name: warned, or strict


@needs_cpu_only_build
@pytest.mark.parametrize("where", ["flag", "config.yaml", "config.pbtxt"])
def test_cuda_asked_for_by_name_warns_once_per_model_load(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          where: str) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    settings = Settings(execution_providers=(CUDA, CPU)) if where == "flag" else Settings()
    if where == "config.yaml":
        (tmp_path / "m" / "config.yaml").write_text("execution_providers: [cuda, cpu]\n")
    if where == "config.pbtxt":
        (tmp_path / "m" / "config.pbtxt").write_text(
            'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ninstance_group [ { kind: KIND_GPU count: 1 } ]\n')
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        load_twice(tmp_path, settings, "m")
    warnings = runtime_records(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings  # a load and a reload
    for warning in warnings:
        assert warning.endswith(f"model.onnx: execution provider {CUDA} unavailable, falling back to {CPU}")


@needs_cpu_only_build
def test_the_instances_of_one_load_share_one_warning(add_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=RUNTIME_LOGGER):
        sessions, got = create_sessions(add_onnx, plan(CUDA, CPU), [None, None, None])
    assert len(sessions) == 3 and got == [CPU]
    assert len(runtime_records(caplog, logging.WARNING)) == 1


@needs_cpu_only_build
def test_strict_providers_fail_a_load_that_asked_for_cuda_by_name(tmp_path: Path) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    state, _, reason = served_providers(tmp_path, Settings(execution_providers=(CUDA,), strict_providers=True), "m")
    assert state is State.UNAVAILABLE
    assert f"execution provider(s) {CUDA} not available in this build of onnxruntime" in reason


@pytest.fixture
def add_onnx(tmp_path: Path) -> Path:
    return add_model(tmp_path / "add.onnx")
