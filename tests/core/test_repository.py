"""onnx_serve.core.repository on a real model repository: Repository(root, Settings(), Metrics()) loading
real ONNX models into real ONNX Runtime sessions, and the state of each version (LOADING, READY, UNAVAILABLE
with a reason, UNLOADING) through load, reload and unload; version policies; the errors get() answers; and
pinned(), which keeps a version open for the calls that already chose it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from onnx_serve.core.errors import InvalidArgument, NotFound, Unavailable
from onnx_serve.core.metrics import Metrics
from onnx_serve.core.repository import Repository
from onnx_serve.core.settings import Settings
from onnx_serve.core.version import ModelVersion, State

from tests.helpers.serving import add_model, slow_model

SLOW_WARM_UP_MS = 200  # a version whose warm-up run takes this long, to look at a repository mid-load


@pytest.fixture
async def repository(tmp_path: Path) -> AsyncIterator[Repository]:
    repo = Repository(tmp_path, Settings(), Metrics())
    yield repo
    await repo.close()


@pytest.fixture(scope="module")
def add_onnx(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One add model's bytes, copied into every version directory that needs one (faster than rebuilding)."""
    return add_model(tmp_path_factory.mktemp("models") / "add.onnx").read_bytes()


def put_version(root: Path, name: str, version: int | str, model: bytes) -> Path:
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


def add_feeds(value: float = 1.0) -> dict[str, np.ndarray]:
    a = np.full((1, 4), value, dtype=np.float32)
    return {"a": a, "b": a}


async def assert_serves_add(version: ModelVersion) -> None:
    result = await version.infer(add_feeds(1.5), None)
    np.testing.assert_array_equal(result.outputs[0], np.full((1, 4), 3.0, dtype=np.float32))


def state_of(version: ModelVersion) -> State:
    """The state now (read through a call, so a type checker does not carry an earlier check over)."""
    return version.state


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------------------------ load


async def test_a_good_model_is_ready_and_serves(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    model = await repository.load("add")
    assert model.state is State.READY and model.reason == ""
    version = repository.get("add")
    assert version is model.versions[1] and version.state is State.READY and version.reason == ""
    assert version.providers == ("CPUExecutionProvider",)  # Settings() asks for CUDA first: fell back
    assert [spec.name for spec in version.signature.inputs] == ["a", "b"]
    assert list(repository.index()) == [("add", "1", State.READY, "")]
    assert repository.all_ready()
    await assert_serves_add(version)


async def test_a_version_is_loading_until_its_warm_up_finishes(repository: Repository, tmp_path: Path) -> None:
    slow_model(tmp_path / "slow" / "1" / "model.onnx", SLOW_WARM_UP_MS)
    loading = asyncio.create_task(repository.load("slow"))
    await wait_until(lambda: "slow" in repository.models)
    assert repository.models["slow"].state is State.LOADING
    assert list(repository.index()) == [("slow", "", State.LOADING, "")]
    with pytest.raises(Unavailable, match=r"^model 'slow' is unavailable: loading$"):
        repository.get("slow")
    model = await loading
    assert model.state is State.READY and repository.get("slow").version == 1


async def test_a_corrupt_model_is_unavailable_with_a_reason_while_the_others_stay_ready(
        repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "good", 1, add_onnx)
    corrupt = put_version(repository.root, "corrupt", 1, b"\x08\x01garbage, not a model")
    await repository.load_all()
    index = {name: (state, reason) for name, _, state, reason in repository.index()}
    assert index["good"] == (State.READY, "")
    state, reason = index["corrupt"]
    assert state is State.UNAVAILABLE
    assert reason.startswith(f"{corrupt}: ONNX Runtime cannot load the model")
    assert repository.models["corrupt"].state is State.UNAVAILABLE
    assert repository.models["corrupt"].reason == reason
    with pytest.raises(Unavailable, match=r"^model 'corrupt' is unavailable: .*cannot load the model"):
        repository.get("corrupt")
    assert not repository.all_ready()
    await assert_serves_add(repository.get("good"))


async def test_a_missing_model_file_is_unavailable_naming_it(repository: Repository, add_onnx: bytes) -> None:
    (repository.root / "empty" / "1").mkdir(parents=True)
    await repository.load("empty")
    path = repository.root / "empty" / "1" / "model.onnx"
    assert list(repository.index()) == [("empty", "1", State.UNAVAILABLE, f"{path}: file not found")]


@pytest.mark.parametrize(("config", "names"), [
    ("max_batch_size: lots\n", "max_batch_size: expected an integer >= 0, got"),
    ("dynamic_batching:\n  max_queue_size: -1\n", "dynamic_batching.max_queue_size: expected an integer >= 0"),
    ("no_such_knob: 1\n", "no_such_knob: unknown key"),
    ("version_policy:\n  latest: {}\n  all: {}\n", "version_policy: set exactly one of latest, all, specific"),
    ("max_batch_size: [1\n", "not valid YAML"),
], ids=["wrong-type", "out-of-range", "unknown-key", "two-policies", "not-yaml"])
async def test_a_bad_config_yaml_is_unavailable_naming_the_file_and_key(
        repository: Repository, add_onnx: bytes, config: str, names: str) -> None:
    put_version(repository.root, "good", 1, add_onnx)
    put_version(repository.root, "misconfigured", 1, add_onnx)
    config_path = repository.root / "misconfigured" / "config.yaml"
    config_path.write_text(config)
    await repository.load_all()
    model = repository.models["misconfigured"]
    assert model.state is State.UNAVAILABLE and model.versions == {}
    assert model.reason.startswith(f"{config_path}: {names}"), model.reason
    assert ("misconfigured", "", State.UNAVAILABLE, model.reason) in list(repository.index())
    with pytest.raises(Unavailable, match="misconfigured"):
        repository.get("misconfigured")
    assert repository.get("good").ready


async def test_a_model_without_version_directories_is_unavailable(repository: Repository) -> None:
    (repository.root / "versionless" / "latest").mkdir(parents=True)  # not a number: not a version
    (repository.root / "versionless" / "model.onnx").write_bytes(b"")
    model = await repository.load("versionless")
    assert model.state is State.UNAVAILABLE
    assert model.reason == (f"{repository.root / 'versionless'}: no version directories "
                            "(expected versionless/1/model.onnx)")
    assert list(repository.index()) == [("versionless", "", State.UNAVAILABLE, model.reason)]


async def test_load_refuses_a_model_that_is_not_in_the_repository(repository: Repository) -> None:
    with pytest.raises(NotFound, match=r"^model 'ghost' is not in the model repository$"):
        await repository.load("ghost")
    assert repository.models == {}


async def test_listeners_are_told_after_every_load_and_unload(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    seen: list[list[tuple[str, str, State, str]]] = []

    async def listener() -> None:
        seen.append(list(repository.index()))

    repository.listeners.append(listener)
    await repository.load("add")
    await repository.unload("add")
    assert seen == [[("add", "1", State.READY, "")], [("add", "", State.UNAVAILABLE, "unloaded")]]


# ------------------------------------------------------------------------------------------- versions


@pytest.mark.parametrize(("config", "loaded"), [
    ("", [10]),
    ("version_policy:\n  latest:\n    num_versions: 2\n", [9, 10]),
    ("version_policy:\n  all: {}\n", [1, 2, 9, 10]),
    ("version_policy:\n  specific:\n    versions: [2, 9]\n", [2, 9]),
], ids=["latest", "latest-2", "all", "specific"])
async def test_version_policy_chooses_versions_numerically(repository: Repository, add_onnx: bytes, config: str,
                                                           loaded: list[int]) -> None:
    for number in (1, 2, 9, 10):
        put_version(repository.root, "add", number, add_onnx)
    (repository.root / "add" / "config.yaml").write_text(config)
    model = await repository.load("add")
    assert sorted(model.versions) == loaded
    assert all(v.ready for v in model.versions.values())
    assert [row[1] for row in repository.index()] == [str(n) for n in loaded]
    assert repository.get("add").version == loaded[-1]  # the highest number, not the last in text order
    for number in loaded:
        assert repository.get("add", str(number)).version == number


@pytest.mark.parametrize("folder", ["\u00b2", "\u0663", "01x", "1" * 19])
async def test_only_ascii_version_numbers_are_versions(repository: Repository, add_onnx: bytes, folder: str) -> None:
    """A folder such as "²" (str.isdigit() but not int()) or "٣" (int() reads 3) is not a version folder."""
    put_version(repository.root, "add", 1, add_onnx)
    (repository.root / "add" / folder).mkdir()
    model = await repository.load("add")
    assert sorted(model.versions) == [1] and model.state is State.READY


async def test_a_specific_policy_that_selects_no_version_is_unavailable(repository: Repository,
                                                                        add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    (repository.root / "add" / "config.yaml").write_text("version_policy:\n  specific:\n    versions: [5]\n")
    model = await repository.load("add")
    assert model.state is State.UNAVAILABLE
    assert model.reason.endswith("version_policy selects none of the versions [1]")


async def test_the_latest_ready_version_is_served_when_the_newest_is_broken(repository: Repository,
                                                                            add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    put_version(repository.root, "add", 2, b"broken")
    (repository.root / "add" / "config.yaml").write_text("version_policy:\n  all: {}\n")
    model = await repository.load("add")
    assert model.state is State.READY
    assert model.versions[2].state is State.UNAVAILABLE
    assert repository.get("add").version == 1
    with pytest.raises(Unavailable, match=r"^model 'add' version 2 is unavailable: .*cannot load the model"):
        repository.get("add", "2")


# ------------------------------------------------------------------------------------------------ get


async def test_get_answers_not_found_for_an_unknown_model(repository: Repository) -> None:
    with pytest.raises(NotFound, match=r"^Request for unknown model: 'ghost' is not found$"):
        repository.get("ghost")
    with pytest.raises(NotFound, match=r"^no model name given$"):
        repository.get("")


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", "x" * 5000, "nul\x00byte"])
async def test_get_never_looks_outside_the_repository(repository: Repository, name: str) -> None:
    (repository.root / ".hidden" / "1").mkdir(parents=True)
    (repository.root / "a" / "b").mkdir(parents=True)
    with pytest.raises(NotFound):
        repository.get(name)


async def test_get_answers_unavailable_for_a_model_on_disk_but_not_loaded(repository: Repository,
                                                                          add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    with pytest.raises(Unavailable, match=r"^model 'add' is not loaded$"):
        repository.get("add")
    assert list(repository.index()) == [("add", "", State.UNAVAILABLE, "unloaded")]


@pytest.mark.parametrize("version", ["v1", "1.0", "-1", "+1", " 1", "\u0663", "1" * 19, "0x1"])
async def test_get_refuses_a_version_that_is_not_a_number(repository: Repository, add_onnx: bytes,
                                                          version: str) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    await repository.load("add")
    with pytest.raises(InvalidArgument, match=r"is not a version number$"):
        repository.get("add", version)


async def test_get_answers_not_found_for_a_version_that_is_not_loaded(repository: Repository,
                                                                      add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    put_version(repository.root, "add", 2, add_onnx)  # on disk, but the latest policy loads 2 only
    await repository.load("add")
    for version in ("1", "7"):
        with pytest.raises(NotFound, match=rf"^model 'add' has no version '{version}'$"):
            repository.get("add", version)
    assert repository.get("add", "02").version == 2  # a number, leading zero or not


# --------------------------------------------------------------------------------------------- reload


async def test_a_reload_serves_the_old_version_until_the_new_one_is_ready(repository: Repository,
                                                                          add_onnx: bytes) -> None:
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    old = repository.get("m")
    slow_model(repository.root / "m" / "2" / "model.onnx", SLOW_WARM_UP_MS)
    reloading = asyncio.create_task(repository.load("m"))
    await asyncio.sleep(SLOW_WARM_UP_MS / 4000)  # the new version is warming up in a worker thread
    assert not reloading.done()
    assert repository.get("m") is old and old.state is State.READY
    await assert_serves_add(old)
    new = (await reloading).versions[2]
    assert repository.get("m") is new and new.state is State.READY
    assert state_of(old) is State.UNLOADING  # retired after the swap
    assert list(repository.index()) == [("m", "2", State.READY, "")]
    with pytest.raises(Unavailable):
        await old.infer(add_feeds(), None)
    result = await new.infer({"x": np.ones((1, 2), np.float32)}, None)
    assert result.outputs[0].shape == (1, 2)


async def test_a_reload_of_the_same_version_number_swaps_in_the_new_file(repository: Repository,
                                                                         add_onnx: bytes, tmp_path: Path) -> None:
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    old = repository.get("m")
    slow = slow_model(tmp_path / "elsewhere" / "slow.onnx", 1)
    shutil.copyfile(slow, repository.root / "m" / "1" / "model.onnx")
    await repository.load("m")
    new = repository.get("m", "1")
    assert new is not old and new.ready and state_of(old) is State.UNLOADING
    assert [spec.name for spec in new.signature.inputs] == ["x"]


async def test_a_reload_that_finds_a_broken_new_version_reports_it_unavailable(repository: Repository,
                                                                               add_onnx: bytes) -> None:
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    broken = put_version(repository.root, "m", 2, b"not a model")
    await repository.load("m")
    rows = {version: (state, reason) for _, version, state, reason in repository.index()}
    state, reason = rows["2"]
    assert state is State.UNAVAILABLE and reason.startswith(f"{broken}: ONNX Runtime cannot load the model")


def ready_gauge(repository: Repository, name: str, version: int) -> float | None:
    return repository.metrics.registry.get_sample_value("onnx_serve_model_ready",
                                                         {"model": name, "version": str(version)})


def load_failures(repository: Repository, name: str) -> float:
    value = repository.metrics.registry.get_sample_value("onnx_serve_model_load_failures_total", {"model": name})
    assert value is not None, "the counter exists, at 0, from the first load on"
    return value


def kept_reason(reason: str) -> str:
    """The index reason of a READY version that serves on past a failed reload (see Repository.load)."""
    return f"reload failed, still serving the previous load: {reason}"


async def test_a_failed_reload_keeps_the_serving_version(repository: Repository, add_onnx: bytes,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """(c) a broken version 2 next to a good 1: version 1 serves on, version 2 is UNAVAILABLE with its reason."""
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    serving = repository.get("m")
    broken = put_version(repository.root, "m", 2, b"not a model")
    attempt = await repository.load("m")
    assert repository.get("m") is serving and serving.state is State.READY
    await assert_serves_add(serving)
    assert attempt.state is State.UNAVAILABLE and attempt.reason.startswith(f"{broken}: ONNX Runtime cannot load")
    assert attempt is not repository.models["m"] and repository.models["m"].state is State.READY
    assert list(repository.index()) == [("m", "1", State.READY, kept_reason(attempt.reason)),
                                        ("m", "2", State.UNAVAILABLE, attempt.reason)]
    with pytest.raises(Unavailable, match=r"^model 'm' version 2 is unavailable: .*cannot load the model"):
        repository.get("m", "2")
    assert repository.all_ready()
    assert ready_gauge(repository, "m", 1) == 1 and ready_gauge(repository, "m", 2) == 0
    assert load_failures(repository, "m") == 1
    assert any(r.levelname == "ERROR" and "reload failed" in r.getMessage() and "m" in r.getMessage()
               for r in caplog.records)


async def test_a_failed_reload_with_a_bad_config_yaml_keeps_the_serving_versions(repository: Repository,
                                                                                 add_onnx: bytes) -> None:
    """(a) a typo in config.yaml, then a load: the previous versions keep serving, the failure is reported."""
    for number in (1, 2):
        put_version(repository.root, "m", number, add_onnx)
    config = repository.root / "m" / "config.yaml"
    config.write_text("version_policy:\n  all: {}\n")
    await repository.load("m")
    serving = [repository.get("m", "1"), repository.get("m", "2")]
    config.write_text("version_policy:\n  all: {}\nno_such_knob: 1\n")
    attempt = await repository.load("m")
    assert attempt.state is State.UNAVAILABLE and attempt.reason.startswith(f"{config}: no_such_knob: unknown key")
    assert [repository.get("m", "1"), repository.get("m", "2")] == serving
    assert all(state_of(v) is State.READY for v in serving)
    await assert_serves_add(repository.get("m"))
    assert list(repository.index()) == [("m", "1", State.READY, kept_reason(attempt.reason)),
                                        ("m", "2", State.READY, kept_reason(attempt.reason))]
    assert repository.models["m"].reason == attempt.reason
    assert repository.all_ready()
    assert ready_gauge(repository, "m", 1) == 1 and ready_gauge(repository, "m", 2) == 1
    assert load_failures(repository, "m") == 1


@pytest.mark.parametrize("how", ["load", "reload_all"])
async def test_a_failed_reload_of_a_truncated_model_keeps_the_serving_version(repository: Repository,
                                                                              add_onnx: bytes, how: str) -> None:
    """(b) a truncated 1/model.onnx, then RepositoryModelLoad or SIGHUP: the loaded version 1 serves on."""
    path = put_version(repository.root, "m", 1, add_onnx)
    put_version(repository.root, "other", 1, add_onnx)
    await repository.load_all()
    serving = repository.get("m")
    path.write_bytes(add_onnx[: len(add_onnx) // 2])
    if how == "load":
        await repository.load("m")
    else:
        await repository.reload_all()
    assert repository.get("m") is serving and state_of(serving) is State.READY
    await assert_serves_add(serving)
    (row,) = [r for r in repository.index() if r[0] == "m"]
    assert row[:3] == ("m", "1", State.READY)
    assert row[3].startswith(kept_reason(f"{path}: ONNX Runtime cannot load the model")), row[3]
    assert repository.all_ready()
    assert ready_gauge(repository, "m", 1) == 1
    assert load_failures(repository, "m") == 1 and load_failures(repository, "other") == 0


async def test_a_failed_version_keeps_its_predecessor_while_the_others_are_replaced(repository: Repository,
                                                                                    add_onnx: bytes) -> None:
    for number in (1, 2):
        put_version(repository.root, "m", number, add_onnx)
    (repository.root / "m" / "config.yaml").write_text("version_policy:\n  all: {}\n")
    await repository.load("m")
    one, two = repository.get("m", "1"), repository.get("m", "2")
    truncated = put_version(repository.root, "m", 2, add_onnx[:100])
    model = await repository.load("m")
    assert model is repository.models["m"] and model.state is State.READY
    assert repository.get("m", "1") is not one and state_of(one) is State.UNLOADING  # replaced
    assert repository.get("m", "2") is two and state_of(two) is State.READY  # its replacement failed
    rows = list(repository.index())
    assert rows[0] == ("m", "1", State.READY, "")
    assert rows[1][:3] == ("m", "2", State.READY) and rows[1][3].startswith(kept_reason(f"{truncated}: "))
    assert load_failures(repository, "m") == 1


async def test_a_reload_after_a_failed_one_swaps_in_the_fixed_model(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    serving = repository.get("m")
    broken = put_version(repository.root, "m", 2, b"not a model")
    await repository.load("m")
    broken.write_bytes(add_onnx)
    model = await repository.load("m")
    assert model.state is State.READY and repository.get("m").version == 2
    assert state_of(serving) is State.UNLOADING
    assert list(repository.index()) == [("m", "2", State.READY, "")]
    assert ready_gauge(repository, "m", 1) is None and ready_gauge(repository, "m", 2) == 1
    assert load_failures(repository, "m") == 1


async def test_a_first_load_that_fails_is_unavailable_and_counted(repository: Repository, add_onnx: bytes,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Nothing serves yet, so there is nothing to keep: the model is UNAVAILABLE, as is an unloaded one."""
    broken = put_version(repository.root, "m", 1, b"not a model")
    model = await repository.load("m")
    assert model is repository.models["m"] and model.state is State.UNAVAILABLE
    assert list(repository.index()) == [("m", "1", State.UNAVAILABLE, model.reason)]
    assert model.reason.startswith(f"{broken}: ONNX Runtime cannot load")
    assert not repository.all_ready() and ready_gauge(repository, "m", 1) == 0
    await repository.load("m")  # still broken, and still nothing to keep
    assert repository.models["m"].state is State.UNAVAILABLE and load_failures(repository, "m") == 2
    assert any(r.levelname == "ERROR" and "model m unavailable" in r.getMessage() for r in caplog.records)
    broken.write_bytes(add_onnx)
    assert (await repository.load("m")).state is State.READY and load_failures(repository, "m") == 2
    put_version(repository.root, "n", 1, add_onnx)
    await repository.load("n")
    assert load_failures(repository, "n") == 0


async def test_the_ready_gauge_stays_up_through_a_same_version_reload(repository: Repository, add_onnx: bytes,
                                                                      tmp_path: Path) -> None:
    put_version(repository.root, "m", 1, add_onnx)
    await repository.load("m")
    assert ready_gauge(repository, "m", 1) == 1
    shutil.copyfile(slow_model(tmp_path / "elsewhere" / "slow.onnx", SLOW_WARM_UP_MS),
                    repository.root / "m" / "1" / "model.onnx")
    reloading = asyncio.create_task(repository.load("m"))
    await asyncio.sleep(SLOW_WARM_UP_MS / 4000)  # the replacement is warming up; the old version serves
    assert not reloading.done()
    assert ready_gauge(repository, "m", 1) == 1
    await reloading
    assert ready_gauge(repository, "m", 1) == 1
    put_version(repository.root, "m", 1, b"not a model")  # a failed same-version reload: version 1 serves on
    await repository.load("m")
    assert ready_gauge(repository, "m", 1) == 1 and repository.get("m").ready


async def test_the_ready_gauge_reads_zero_while_a_new_model_loads(repository: Repository, tmp_path: Path) -> None:
    slow_model(tmp_path / "slow" / "1" / "model.onnx", SLOW_WARM_UP_MS)
    loading = asyncio.create_task(repository.load("slow"))
    await wait_until(lambda: "slow" in repository.models)
    await asyncio.sleep(SLOW_WARM_UP_MS / 4000)
    assert ready_gauge(repository, "slow", 1) == 0
    await loading
    assert ready_gauge(repository, "slow", 1) == 1


# --------------------------------------------------------------------------------------------- unload


async def test_unload_takes_a_model_offline_and_the_index_says_unloaded(repository: Repository,
                                                                        add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    put_version(repository.root, "other", 1, add_onnx)
    await repository.load_all()
    version = repository.get("add")
    await repository.unload("add")
    assert state_of(version) is State.UNLOADING
    assert list(repository.index()) == [("add", "", State.UNAVAILABLE, "unloaded"), ("other", "1", State.READY, "")]
    with pytest.raises(Unavailable, match=r"^model 'add' is not loaded$"):
        repository.get("add")
    with pytest.raises(Unavailable):
        await version.infer(add_feeds(), None)
    with pytest.raises(NotFound, match=r"^model 'add' is not loaded$"):
        await repository.unload("add")
    await assert_serves_add(repository.get("other"))
    await repository.load("add")  # and it can come back
    await assert_serves_add(repository.get("add"))


async def test_reload_all_unloads_models_that_left_the_repository(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "stays", 1, add_onnx)
    put_version(repository.root, "goes", 1, add_onnx)
    await repository.load_all()
    shutil.rmtree(repository.root / "goes")
    await repository.reload_all()
    assert set(repository.models) == {"stays"}
    assert list(repository.index()) == [("stays", "1", State.READY, "")]
    with pytest.raises(NotFound, match=r"^Request for unknown model: 'goes' is not found$"):
        repository.get("goes")


# --------------------------------------------------------------------------------------------- pinned


async def test_close_waits_for_a_pinned_call_which_still_gets_answered(repository: Repository,
                                                                       add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    await repository.load("add")
    version = repository.get("add")
    with version.pinned() as pinned:
        assert pinned is version
        unloading = asyncio.create_task(repository.unload("add"))
        await wait_until(lambda: state_of(version) is State.UNLOADING)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert not unloading.done()  # close() waits for the pin
        with pytest.raises(Unavailable):
            repository.get("add")  # new lookups no longer find it...
        await assert_serves_add(version)  # ...but the call that chose it is answered
    await asyncio.wait_for(unloading, 5)
    with pytest.raises(Unavailable):
        await version.infer(add_feeds(), None)


async def test_close_waits_for_every_pin(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    await repository.load("add")
    version = repository.get("add")
    with version.pinned():
        with version.pinned():
            closing = asyncio.create_task(version.close())
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.02)
        assert not closing.done()  # one pin is still held
        await assert_serves_add(version)
    await asyncio.wait_for(closing, 5)


async def test_close_does_not_wait_when_nothing_is_pinned(repository: Repository, add_onnx: bytes) -> None:
    put_version(repository.root, "add", 1, add_onnx)
    await repository.load("add")
    version = repository.get("add")
    with version.pinned():
        pass
    await asyncio.wait_for(version.close(), 5)
    assert state_of(version) is State.UNLOADING
