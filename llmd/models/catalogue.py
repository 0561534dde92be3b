"""The catalogue: the models llmd knows, by name and alias, and the files they come from.

A model is known from a [models.NAME] table in the config, from a .gguf file in models_dir,
or both (a table whose path is a file in the directory is that file, with its settings).
Each known model is an `Entry`; a loaded version of it is a `Model` (its process, and the
requests using it). The catalogue scans the directory (on watcher events, and every
loading.rescan_s), lets new and changed files settle before reading them, and reports what
changed as `Change`s: acting on them (a hot swap, draining) is the manager's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from llmd.engine import messages as m
from llmd.engine.client import EngineOptions, ModelState, RequestHandle
from llmd.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from llmd.gguf import Estimate, GGUFError, Incomplete, ModelFile, read_model
from llmd.models.budget import cost
from llmd.models.options import engine_options
from llmd.settings import ModelSettings, Settings
from llmd.templates import ChatTemplate, choose_template
from llmd.units import Duration, parse_duration
from llmd.watch import (
    Candidate,
    DirectoryWatcher,
    FileKey,
    file_key,
    find_models,
    split_parts,
)

log = logging.getLogger("llmd.models")

INCOMPLETE_GRACE_S = 10.0
"""A file that stays incomplete (shorter than its tensors) this long is reported truncated."""


class Process(Protocol):
    """What the manager and the serving layer use of a model process
    (`llmd.engine.client.ModelProcess`; tests use a fake with the same contract)."""

    name: str
    options: EngineOptions
    state: ModelState
    error: str | None
    """Why it failed or restarts (None while all is well)."""
    info: m.Ready | None
    """What the loaded model told the daemon about itself (None until ready)."""
    stats: m.Stats | None
    """The engine's last report (left as it was when the process stopped)."""
    pid: int | None
    restarts: int
    loaded_at: float | None
    """time.time() of the first successful load."""

    async def start(self) -> None:
        """Load the model; returns once it is ready or has failed (see `state`, `error`)."""

    async def stop(self) -> None:
        """End the process; requests still in it fail."""

    def submit(self, req: m.GenerateRequest) -> RequestHandle:
        """Queue a request in the engine (or raise: not ready, or busy)."""

    def cancel(self, handle: RequestHandle) -> None:
        """Free a request's sequences now (the client went away)."""

    @property
    def num_inflight(self) -> int:
        """Requests submitted and not yet finished."""


@dataclass
class Model:
    """One loaded version of a model: its process, and the requests using it."""

    name: str
    settings: ModelSettings
    process: Process
    estimate: Estimate
    file_key: FileKey | None = None
    active: int = 0
    """Requests holding this model (from admission to their last byte)."""
    last_used: float = field(default_factory=time.monotonic)
    expires: float | None = None
    """monotonic time after which an idle model is unloaded; None: kept."""
    peak_rss: int = 0
    served: bool = False
    draining: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _template: ChatTemplate | None = None
    _template_for: object = None

    def chat_template(self) -> ChatTemplate:
        info = self.process.info
        if info is None:
            raise ServiceUnavailable(
                f"model '{self.name}' is {self.process.state.value}", code="model_not_ready"
            )
        if self._template_for is not info:
            self._template = choose_template(
                self.settings.chat_template, info.metadata, info.bos_token, info.eos_token
            )
            self._template_for = info
        if self._template is None:
            arch = info.metadata.get("general.architecture", "unknown")
            raise InvalidRequest(
                f"Model '{self.name}' has no chat template (architecture '{arch}') and none is "
                "configured: use /v1/completions, or set chat_template for it in the config.",
                code="chat_template_missing",
                param="model",
            )
        return self._template

    def configure(self, settings: ModelSettings) -> None:
        """New per-model settings that apply without a reload (sampling, chat template)."""
        self.settings = settings
        self._template_for = None

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.process.num_inflight > 0

    def cost(self) -> int:
        """Bytes this model counts against the budget: measured once it has served."""
        return cost(self.estimate.total, self.peak_rss, self.served)


@dataclass
class Entry:
    """A model llmd knows, loaded or not."""

    name: str
    settings: ModelSettings
    path: Path
    configured: bool
    """From a [models.NAME] table (else: a file found in models_dir)."""
    file: ModelFile | None = None
    file_key: FileKey | None = None
    error: str | None = None
    """Why the file cannot be served (not GGUF, truncated, legacy GGML, missing)."""
    load_error: str | None = None
    current: Model | None = None
    old: list[Model] = field(default_factory=list)
    """Other versions: draining ones, and in a hot swap the new one while it loads."""
    loading: asyncio.Task[Model] | None = None
    pinned: bool = False
    keep_alive: float | None | str = "default"
    """Set by the admin API; "default" means: from the settings."""
    removed: bool = False

    @property
    def failed(self) -> str | None:
        return self.error or self.load_error

    def state(self) -> str:
        if self.failed and self.current is None:
            return "failed"
        if self.removed:
            return "unloading"
        if self.current is not None:
            return self.current.process.state.value
        if self.loading is not None:
            return "loading"
        if self.file is None:
            return "failed" if self.error else "pending"
        return "unloaded"

    def versions(self) -> list[Model]:
        """Every loaded version: the current one first, then the others."""
        return [m for m in [self.current, *self.old] if m is not None]

    def keep_alive_s(self, default: Duration) -> float | None:
        """Seconds this model stays loaded once idle; None: forever. The admin API's value,
        else its own keep_alive setting, else forever when it preloads, else `default`
        (loading.keep_alive): the order ModelSettings.keep_alive documents."""
        if self.keep_alive != "default":
            return self.keep_alive  # type: ignore[return-value]
        if self.settings.keep_alive is not None:
            return parse_duration(self.settings.keep_alive)
        if self.configured and self.settings.preload:
            return None
        return parse_duration(default)


@dataclass(frozen=True)
class Change:
    """What a scan or a reload found that the loaded versions of a model must follow."""

    entry: Entry
    kind: Literal["unusable", "new_version", "retune", "remove"]
    """unusable: its file can no longer be served (drain the current version); new_version:
    its file was replaced, retune: its load options changed (hot swap either way); remove:
    it is gone (drain, then forget it)."""
    why: str = ""


def _read(path: Path) -> tuple[ModelFile | None, str | None, bool]:
    """(file, error, incomplete) for a model path; runs in a thread."""
    try:
        return read_model(path), None, False
    except Incomplete as exc:
        return None, str(exc), True
    except GGUFError as exc:
        return None, str(exc), False
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}", False


class Catalogue:
    """Entries by name, the names and aliases that lead to them, and the directory scan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.entries: dict[str, Entry] = {}
        self.names: dict[str, str] = {}
        """Every name and alias, to the name of its entry."""
        self.default = settings.default_model_name()
        self._wake = asyncio.Event()
        # Keyed by (model name, path): several config tables may serve one file.
        self._pending: dict[tuple[str, Path], tuple[FileKey | None, float]] = {}
        self._watcher: DirectoryWatcher | None = None
        self._scan_lock = asyncio.Lock()
        self._clashes: set[Path] = set()
        for name, ms in settings.models.items():
            self.add_configured(name, ms)

    # -- names -------------------------------------------------------------------------------

    def add_configured(self, name: str, ms: ModelSettings) -> Entry:
        entry = Entry(name, ms, self.settings.model_path(name), configured=True, pinned=ms.pinned)
        self.entries[name] = entry
        for alias in [name, *ms.aliases]:
            self.names[alias] = name
        return entry

    def reconfigure(self, settings: Settings, follow: Callable[[Change], None]) -> None:
        """Take new settings (a reload): tables gone, added, moved or changed, and the
        directory moved, handing to `follow` what the loaded versions must do about it."""
        old, self.settings = self.settings, settings
        self.default = settings.default_model_name()
        for name, gone in list(self.entries.items()):
            if gone.configured and name not in settings.models:
                follow(Change(gone, "remove", "no longer in the config"))
        for name, ms in settings.models.items():
            entry: Entry | None = self.entries.get(name)
            path = settings.model_path(name)
            if entry is None or entry.removed or (not entry.configured and entry.path != path):
                if entry is not None and not entry.removed:
                    follow(Change(entry, "remove", "name now configured for another file"))
                self.add_configured(name, ms)
                continue
            before = engine_options(old, entry.settings, entry.path)
            entry.settings, entry.configured, entry.path = ms, True, path
            entry.pinned = ms.pinned
            aliases = [name, *ms.aliases]
            for alias in aliases:
                self.names[alias] = name
            for alias, real in list(self.names.items()):
                if real == name and alias not in aliases:
                    del self.names[alias]
            if entry.current is not None:
                entry.current.configure(ms)
                if engine_options(settings, ms, path) != before:
                    follow(Change(entry, "retune"))
        if old.models_dir != settings.models_dir or old.loading.watch != settings.loading.watch:
            self.watch()
        for entry in list(self.entries.values()):
            if not entry.configured and entry.path.parent != settings.models_dir:
                follow(Change(entry, "remove", "models_dir changed"))

    def forget(self, entry: Entry) -> None:
        """Drop an entry and its names (nothing of it is loaded any more)."""
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
        for alias, real in list(self.names.items()):
            if real == entry.name:
                del self.names[alias]

    def resolve(self, name: str | None) -> Entry:
        if name is None or name == "":
            if self.default is None:
                raise InvalidRequest(
                    "No model given and no default model configured.", param="model"
                )
            name = self.default
        real = self.names.get(name)
        if real is None or self.entries[real].removed:
            raise ModelNotFound(name)
        entry = self.entries[real]
        if entry.file is None and entry.error is None and not entry.configured:
            raise ModelNotFound(name)  # still being copied
        return entry

    # -- the models directory -----------------------------------------------------------------

    def watch(self) -> None:
        """Watch models_dir (if loading.watch says so): changes wake the scanner at once."""
        self.unwatch()
        if self.settings.loading.watch:
            self._watcher = DirectoryWatcher(self.settings.models_dir, self._wake)
            if not self._watcher.start():
                self._watcher = None

    def unwatch(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    async def run(self, follow: Callable[[Change], None]) -> None:
        """Scan whenever the watcher wakes it (and every loading.rescan_s; every 0.1 s while
        a file settles), handing each change to `follow`."""
        while True:
            timeout = 0.1 if self._pending else self.settings.loading.rescan_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.scan(follow)
            except Exception:
                log.exception("scanning %s failed", self.settings.models_dir)

    async def scan(self, follow: Callable[[Change], None], initial: bool = False) -> None:
        """Compare the files with what is known; settle new versions; add and update entries,
        handing each change to `follow` as it is found.

        `initial`: take the files as they are, without waiting for them to settle (at
        start-up and after a reload)."""
        async with self._scan_lock:
            found = await asyncio.to_thread(find_models, self.settings.models_dir)
            paths = self._paths(found)
            now = time.monotonic()
            for name, path in paths:
                if change := await self._check(name, path, now, initial):
                    follow(change)
            seen = {name for name, _ in paths}
            for entry in list(self.entries.values()):
                if not entry.configured and entry.name not in seen and not entry.removed:
                    follow(Change(entry, "remove", self._why_gone(entry)))

    def _why_gone(self, entry: Entry) -> str:
        """Why a model served under its file name is no more: the file went away, or a
        `[models.X]` table now serves that file under its own name (the file is still there:
        the journal must not tell the operator it was removed)."""
        path = entry.path.resolve()
        owners = sorted(
            e.name for e in self.entries.values() if e.configured and e.path.resolve() == path
        )
        if owners:
            return f"its file is now served as {', '.join(owners)} ([models.{owners[0]}])"
        return "file removed"

    def _paths(self, found: list[Candidate]) -> list[tuple[str, Path]]:
        """(model name, path) of every model the files and the config make."""
        # Several tables may name one file (say, with different contexts): each is a model.
        configured: dict[Path, list[Entry]] = {}
        for e in self.entries.values():
            if e.configured:
                configured.setdefault(e.path.resolve(), []).append(e)
        paths: list[tuple[str, Path]] = []
        for cand in found:
            owners = configured.get(cand.path.resolve())
            if owners:
                paths += [(owner.name, owner.path) for owner in owners]
                continue
            known = self.names.get(cand.name)
            if known is not None and self.entries[known].path != cand.path:
                if cand.path not in self._clashes:
                    self._clashes.add(cand.path)
                    log.warning(
                        "%s: the name %s is taken by model %s: rename the file to serve it",
                        cand.path,
                        cand.name,
                        known,
                    )
                continue
            paths.append((cand.name, cand.path))
        for entry in self.entries.values():
            if entry.configured and all(n != entry.name for n, _ in paths):
                paths.append((entry.name, entry.path))
        return paths

    async def _check(self, name: str, path: Path, now: float, initial: bool) -> Change | None:
        """Read a new or changed file once it has settled (kept its size and stat for
        loading.settle_s, and holds all its tensors)."""
        key = await asyncio.to_thread(file_key, split_parts(path))
        entry: Entry | None = self.entries.get(name)
        if entry is not None and key == entry.file_key and (entry.file or entry.error):
            self._pending.pop((name, path), None)
            return None
        if key is None and entry is not None and entry.configured:
            return self._set_file(entry, None, f"file not found: {path}", None)
        first = self._pending.get((name, path))
        if first is None or first[0] != key:
            self._pending[(name, path)] = (key, now)
            if not initial:
                return None
        elif now - first[1] < self.settings.loading.settle_s:
            return None
        file, error, incomplete = await asyncio.to_thread(_read, path)
        pending_since = self._pending[(name, path)][1]
        if incomplete and not initial and now - pending_since < INCOMPLETE_GRACE_S:
            return None  # still being copied: not listed until complete
        self._pending.pop((name, path), None)
        if entry is None:
            entry = Entry(name, ModelSettings(path=path, preload=False), path, configured=False)
            self.entries[name] = entry
            self.names[name] = name
            log.info("model %s: found %s", name, path)
        if incomplete and error is not None and not initial:
            error = f"{error} (unchanged for {INCOMPLETE_GRACE_S:.0f} s)"
        return self._set_file(entry, file, error, key)

    def _set_file(
        self, entry: Entry, file: ModelFile | None, error: str | None, key: FileKey | None
    ) -> Change | None:
        changed = entry.file_key is not None and key != entry.file_key
        entry.file, entry.error, entry.file_key = file, error, key
        entry.load_error = None
        if error is not None:
            log.error("model %s: %s: %s", entry.name, entry.path, error)
            if entry.current is None:
                return None
            return Change(entry, "unusable", "file no longer usable")
        if file is not None and changed:
            log.info("model %s: new version of %s", entry.name, entry.path)
            if entry.current is not None:
                return Change(entry, "new_version")
        return None
