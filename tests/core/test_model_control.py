"""Triton's model control modes (core/model_control.py) on a real repository of real ONNX models: what loads at
start under none, explicit (--load-model, `*`) and poll; load and unload requests refused with Triton's words
where Triton refuses them; poll loading what appears or changes on disk and unloading what leaves it, never
losing a serving model to a broken change; SIGHUP under explicit; --strict-readiness."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.errors import Unavailable
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.model_control import check_startup_models, fingerprint
from onnx_serve.core.repository import Repository
from onnx_serve.core.settings import SettingError, Settings
from onnx_serve.core.version import State

from tests.core.test_repository import add_feeds, assert_serves_add, put_version, wait_until
from tests.helpers.serving import add_model

REFUSED = "explicit model load / unload is not allowed if polling is enabled"


@pytest.fixture(scope="module")
def add_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return add_model(tmp_path_factory.mktemp("models") / "add.onnx").read_bytes()


@pytest.fixture
def root(tmp_path: Path, add_onnx: bytes) -> Path:
    for name in ("a", "b"):
        put_version(tmp_path, name, 1, add_onnx)
    return tmp_path


Started = Callable[..., Any]


@pytest.fixture
async def started(root: Path) -> AsyncIterator[Started]:
    """started(**settings): a data plane over `root` after its start-up load, closed at the end."""
    made: list[Repository] = []

    async def start(**settings: Any) -> DataPlane:
        repository = Repository(root, Settings(execution_providers=("CPUExecutionProvider",), **settings),
                                Metrics())
        made.append(repository)
        plane = DataPlane(repository, repository.metrics, max_elements=1 << 20)
        await repository.load_all()
        plane.started = True
        return plane

    yield start
    for repository in made:
        await repository.close()


@pytest.mark.parametrize("mode", ["none", "poll"])
async def test_none_and_poll_load_everything_and_refuse_load_and_unload(started: Started, mode: str) -> None:
    plane = await started(model_control_mode=mode, repository_poll_s=0)
    assert set(plane.repository.models) == {"a", "b"} and plane.ready()
    for call in (plane.load_model("a"), plane.unload_model("b")):
        with pytest.raises(Unavailable, match=f"^{REFUSED} .--model-control-mode {mode}"):
            await call
    assert plane.model_ready("b")


async def test_not_given_loads_everything_and_serves_load_and_unload(started: Started) -> None:
    plane = await started()
    assert set(plane.repository.models) == {"a", "b"}
    await plane.unload_model("b")
    await plane.load_model("b")
    assert plane.model_ready("b")


async def test_explicit_loads_only_the_named_models_then_what_requests_ask(started: Started) -> None:
    plane = await started(model_control_mode="explicit", load_model=("b",))
    assert set(plane.repository.models) == {"b"}
    assert ("a", "", State.UNAVAILABLE, "unloaded") in list(plane.repository.index())
    assert plane.ready()  # every loaded model is READY
    await plane.load_model("a")
    assert plane.model_ready("a")
    await plane.unload_model("b")
    assert not plane.model_ready("b") and plane.ready()


async def test_explicit_without_load_model_starts_empty_and_ready(started: Started) -> None:
    plane = await started(model_control_mode="explicit")
    assert plane.repository.models == {} and plane.ready()


async def test_explicit_with_star_loads_everything(started: Started) -> None:
    plane = await started(model_control_mode="explicit", load_model=("*",))
    assert set(plane.repository.models) == {"a", "b"}


async def test_load_model_is_ignored_outside_explicit_as_triton(started: Started) -> None:
    plane = await started(model_control_mode="none", load_model=("a",))
    assert set(plane.repository.models) == {"a", "b"}


async def test_sighup_under_explicit_reloads_only_the_loaded_models(started: Started, root: Path,
                                                                    add_onnx: bytes) -> None:
    plane = await started(model_control_mode="explicit", load_model=("a",))
    put_version(root, "a", 2, add_onnx)
    await plane.repository.reload_all()
    assert set(plane.repository.models) == {"a"}
    assert plane.repository.get("a").version == 2


def test_a_startup_model_not_in_the_repository_stops_the_start(root: Path) -> None:
    settings = Settings(model_repository=root, model_control_mode="explicit", load_model=("a", "ghost"))
    with pytest.raises(SettingError, match=r"--load-model: 'ghost' not in the model repository"):
        check_startup_models(settings)
    check_startup_models(dataclasses.replace(settings, load_model=("a",)))
    check_startup_models(dataclasses.replace(settings, load_model=("*",)))
    check_startup_models(dataclasses.replace(settings, model_control_mode="none"))  # ignored there


def test_star_must_be_alone() -> None:
    with pytest.raises(SettingError, match=r"'\*' \(every model\) must be the only --load-model"):
        Settings(load_model=("*", "a"))


async def test_poll_loads_what_appears_and_changes_and_unloads_what_leaves(started: Started, root: Path,
                                                                           add_onnx: bytes) -> None:
    plane = await started(model_control_mode="poll", repository_poll_s=0)  # polled by hand below
    poller = plane.repository._poller
    assert poller is not None
    put_version(root, "c", 1, add_onnx)
    put_version(root, "a", 2, add_onnx)
    shutil.rmtree(root / "b")
    before = plane.repository.models["a"]
    await poller.poll()
    assert set(plane.repository.models) == {"a", "c"}
    assert plane.repository.get("a").version == 2 and plane.repository.models["a"] is not before
    await assert_serves_add(plane.repository.get("c"))
    unchanged = plane.repository.models["c"]
    await poller.poll()  # nothing changed: nothing reloads
    assert plane.repository.models["c"] is unchanged


async def test_a_broken_change_on_disk_keeps_the_serving_model(started: Started, root: Path) -> None:
    plane = await started(model_control_mode="poll", repository_poll_s=0)
    poller = plane.repository._poller
    assert poller is not None
    (root / "a" / "config.yaml").write_text("max_batch_size: lots\n")
    await poller.poll()
    served = plane.repository.get("a")  # still READY: the previous load serves on
    assert served.ready and "reload failed, still serving the previous load" in served.reason
    result = await plane.infer("a", "", add_feeds(1.5))
    assert result.outputs[0][1].tolist() == [[3.0] * 4]
    (root / "a" / "config.yaml").write_text("max_batch_size: 8\n")  # fixed: the next poll swaps it in
    await poller.poll()
    assert plane.repository.get("a").reason == "" and plane.repository.get("a").config.max_batch_size == 8


async def test_poll_runs_by_itself_every_interval(started: Started, root: Path, add_onnx: bytes) -> None:
    plane = await started(model_control_mode="poll", repository_poll_s=0.05)
    put_version(root, "c", 1, add_onnx)
    await wait_until(lambda: "c" in plane.repository.models and plane.repository.models["c"].state is State.READY)


def test_a_fingerprint_changes_with_any_file(root: Path) -> None:
    first = fingerprint(root / "a")
    assert first == fingerprint(root / "a") and len(first) == 1
    (root / "a" / "labels.txt").write_text("x\n")
    assert fingerprint(root / "a") != first
    assert fingerprint(root / "missing") == frozenset()


async def test_not_strict_readiness_is_ready_with_a_broken_model(started: Started, root: Path) -> None:
    (root / "b" / "1" / "model.onnx").write_bytes(b"not onnx")
    strict = await started()
    assert not strict.ready()
    relaxed = await started(strict_readiness=False)
    assert relaxed.ready() and not relaxed.model_ready("b") and relaxed.model_ready("a")
    relaxed.draining = True
    assert not relaxed.ready()
