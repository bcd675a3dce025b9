"""Triton's model control modes (--model-control-mode) over the model repository: which models load at start,
whether RepositoryModelLoad / RepositoryModelUnload requests are served, and, in `poll` mode, the loop that
loads what changed on disk.

- none: every model loads at start; load and unload requests are refused (UNAVAILABLE, Triton's words);
- explicit: the --load-model models (all with `*`) load at start; load and unload requests do the rest;
- poll: every model loads at start; every --repository-poll-secs, a model directory that appeared or changed
  (any file's size or modification time) is (re)loaded, one that disappeared is unloaded; load and unload
  requests are refused. A reload that fails keeps what serves (Repository.load's rule);
- not given (onnx-serve's own default): every model at start, and load and unload requests served.
SIGHUP reloads what the mode manages: every model of the repository, or under explicit the loaded ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from onnx_serve.core.errors import ConfigError, ServeError, Unavailable
from onnx_serve.core.settings import SettingError, Settings

if TYPE_CHECKING:
    from onnx_serve.core.repository import Repository

log = logging.getLogger(__name__)
# Triton's answer to a load or unload request outside explicit mode (tritonclient users match on it).
REQUESTS_REFUSED = "explicit model load / unload is not allowed if polling is enabled"
MAX_FINGERPRINT_FILES = 10_000  # a model directory with more files than this is compared on its first ones
Fingerprint = frozenset[tuple[str, int, int]]  # (path in the model directory, size, mtime_ns) of every file


def check_requests_allowed(settings: Settings) -> None:
    """Raises Unavailable for a load or unload request when the mode does not take them (none, poll)."""
    mode = settings.model_control_mode
    if mode in ("none", "poll"):
        raise Unavailable(f"{REQUESTS_REFUSED} (--model-control-mode {mode}; with explicit, load and unload "
                          "requests are served)")


def startup_models(settings: Settings, on_disk: Iterable[str]) -> tuple[list[str], list[str]]:
    """The models to load at start, and the --load-model names that are not in the repository."""
    names = list(on_disk)
    if settings.model_control_mode != "explicit" or "*" in settings.load_model:
        return names, []
    present = set(names)
    chosen = list(dict.fromkeys(settings.load_model))
    return [n for n in chosen if n in present], [n for n in chosen if n not in present]


def check_startup_models(settings: Settings) -> None:
    """Raises SettingError, before the server starts, for a --load-model name that is not in the repository
    (Triton fails its start then too)."""
    if settings.model_control_mode != "explicit" or not settings.load_model or "*" in settings.load_model:
        return
    from onnx_serve.core.metrics import Metrics
    from onnx_serve.core.repository import Repository

    repository = Repository(settings.model_repository, settings, Metrics())
    try:
        _, missing = startup_models(settings, repository.scan())
    except ConfigError as exc:
        raise SettingError(str(exc)) from None
    if missing:
        raise SettingError(f"--load-model: {', '.join(repr(n) for n in missing)} not in the model repository "
                           f"{settings.model_repository}")


def fingerprint(directory: Path) -> Fingerprint:
    """What a change to a model directory changes: each file's path, size and modification time (blocking: run
    it in a thread). A directory that cannot be read has the empty fingerprint."""
    found: set[tuple[str, int, int]] = set()
    for folder, _, files in os.walk(directory, followlinks=True):
        for file in files:
            path = Path(folder, file)
            with contextlib.suppress(OSError):  # removed meanwhile: the next poll sees what remains
                stat = path.stat()
                found.add((str(path.relative_to(directory)), stat.st_size, stat.st_mtime_ns))
            if len(found) >= MAX_FINGERPRINT_FILES:
                return frozenset(found)
    return frozenset(found)


class Poller:
    """--model-control-mode poll: every `interval_s`, (re)loads the models whose directory appeared or changed
    and unloads those that disappeared. Repository.load keeps a serving model through a failed reload."""

    def __init__(self, repository: Repository, interval_s: float) -> None:
        self.repository = repository
        self.interval_s = interval_s
        self.known: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    async def snapshot(self) -> list[str]:
        """Records what is on disk now (before the start-up load, so that a change during it is seen)."""
        names = self.repository.scan()
        self.known = await asyncio.to_thread(self._fingerprints, names)
        return names

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="repository-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception:  # a fault in one poll must not end polling
                log.exception("polling the model repository failed; polling on")

    async def poll(self) -> None:
        """One look at the repository; loads and unloads one model at a time, in name order."""
        repository = self.repository
        try:
            names = repository.scan()
        except ConfigError as exc:  # the repository itself is gone for now: change nothing
            log.warning("model repository poll: %s; the models serve on", exc)
            return
        current = await asyncio.to_thread(self._fingerprints, names)
        for name in sorted(set(self.known) - set(current)):
            if name in repository.models:
                log.info("model %s left the model repository: unloading it", name)
                with contextlib.suppress(ServeError):  # unloaded meanwhile
                    await repository.unload(name)
        for name in sorted(current):
            if self.known.get(name) == current[name] and name in repository.models:
                continue
            log.info("model %s %s on disk: loading it", name, "changed" if name in self.known else "appeared")
            try:
                await repository.load(name)  # a failure is logged there; what served serves on
            except ServeError as exc:  # it left the repository between the scan and the load
                log.warning("model %s: %s", name, exc)
        self.known = current

    def _fingerprints(self, names: list[str]) -> dict[str, Fingerprint]:
        return {name: fingerprint(self.repository.directory(name)) for name in names}
