"""A model whose warm-up run fails is UNAVAILABLE with a reason that says why, whatever the exception's message."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from onnx_serve.core import runtime
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import Repository
from onnx_serve.core.runtime import first_line
from onnx_serve.core.settings import Settings
from onnx_serve.core.version import State

from tests.helpers.serving import add_model


def test_first_line_names_the_type_of_an_empty_message() -> None:
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(RuntimeError("  \n ")) == "RuntimeError"
    assert first_line(RuntimeError("\nbad shape\nstack...")) == "bad shape"
    assert first_line(ValueError("x" * 600)) == "x" * 500


@pytest.mark.parametrize("message", ["", "kernel failed\nat frame 1"])
def test_a_failed_warm_up_is_the_reason_the_model_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 message: str) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    create_session = runtime.create_session

    def failing_session(*args: Any, **kwargs: Any) -> tuple[ort.InferenceSession, list[str]]:
        session, providers = create_session(*args, **kwargs)

        def run(*_: Any) -> None:
            raise RuntimeError(message)

        session.run = run
        return session, providers

    monkeypatch.setattr(runtime, "create_session", failing_session)
    repo = Repository(tmp_path, Settings(execution_providers=("CPUExecutionProvider",)), Metrics())
    model = asyncio.run(repo.load("add"))
    assert model.state is State.UNAVAILABLE
    expected = message.splitlines()[0] if message else "RuntimeError"
    assert f"warm-up inference failed: {expected}; the default warm-up sends zeros" in model.reason, model.reason
    assert "model_warmup" in model.reason  # the reason names the config key that fixes it
