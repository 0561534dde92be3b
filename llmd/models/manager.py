"""The model manager: which version of each model serves, and when processes start and end.

Requests hold a `Model` for their whole life (`ModelManager.use`), so a hot swap only changes
which `Model` new requests get: the old one finishes its requests, then its process ends
(draining). Loading happens on demand, within the memory budget (`budget.choose_victims`
picks the idle models to unload; a model that cannot fit is refused with the numbers); idle
models are unloaded when their keep-alive expires; a reload re-reads the settings without
dropping a request. The catalogue says what exists; the processes come from
`process_factory` (the real `ModelProcess`, or a fake in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from llmd.engine.client import (
    EngineOptions,
    ModelProcess,
    ModelState,
    close_spares,
    prepare_spare,
)
from llmd.errors import ServiceUnavailable
from llmd.models.budget import mib, rss
from llmd.models.catalogue import Catalogue, Change, Entry, Model, Process
from llmd.models.memory import Memory
from llmd.models.options import engine_options
from llmd.settings import Settings

log = logging.getLogger("llmd.models")

ModelListener = Callable[[str, str, str], None]
"""(model name, event, why): events are load, load_failed, swap, unload, remove."""

ProcessFactory = Callable[[str, EngineOptions], Process]
"""(model name, options) -> a model process, not yet started."""


def model_process(name: str, options: EngineOptions) -> Process:
    """The real model process. A file that never loaded will not load on a retry either: the
    manager reports it failed and tries again only when the file changes."""
    return ModelProcess(name, options, retry_failed_load=False)


class ModelManager:
    """Every model's versions over time: leases, loads, swaps, drains, keep-alive, reloads."""

    def __init__(
        self,
        settings: Settings,
        process_factory: ProcessFactory = model_process,
        *,
        spares: bool | None = None,
        read_rss: Callable[[int | None], int | None] = rss,
    ) -> None:
        """`spares`: have a model process started ahead for loads on demand (default: when
        the processes are the real ones). `read_rss`: a process's resident memory by pid."""
        self.catalogue = Catalogue(settings)
        self.memory = Memory(self.catalogue, read_rss)
        self.process_factory = process_factory
        self.spares = process_factory is model_process if spares is None else spares
        self._lock = asyncio.Lock()
        self._reap_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._drains: set[asyncio.Task[None]] = set()
        self.started = False
        """True once the start-up scan and the preloads are done."""
        self.listeners: list[ModelListener] = []
        """Told of every load, load_failed, swap, unload and removal (metrics, audit log)."""

    # -- what the rest of the daemon reads --------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.catalogue.settings

    @property
    def entries(self) -> dict[str, Entry]:
        return self.catalogue.entries

    @property
    def names(self) -> dict[str, str]:
        return self.catalogue.names

    @property
    def default(self) -> str | None:
        return self.catalogue.default

    def resolve(self, name: str | None) -> Entry:
        return self.catalogue.resolve(name)

    @property
    def memory_budget_bytes(self) -> int:
        return self.memory.budget_bytes

    @property
    def memory_reserve_bytes(self) -> int:
        return self.memory.reserve_bytes

    def loaded(self) -> list[Model]:
        """Every model process alive: current versions and those draining."""
        return [m for entry in self.entries.values() for m in entry.versions()]

    def memory_used_bytes(self) -> int:
        """Memory the loaded models take, measured (estimated until first measured)."""
        return self.memory.used_bytes()

    def keep_alive_of(self, entry: Entry) -> float | None:
        """Seconds an idle model stays loaded; None: forever."""
        return entry.keep_alive_s(self.settings.loading.keep_alive)

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.catalogue.scan(self._follow, initial=True)
        self.catalogue.watch()
        self._tasks = [
            asyncio.create_task(self.catalogue.run(self._follow), name="models:scan"),
            asyncio.create_task(self._reaper(), name="models:reap"),
        ]
        await self._preload()
        self.started = True
        if self.spares and any(e.current is None for e in self.entries.values()):
            # Something may be loaded on demand: have its process started ahead.
            any_entry = next(iter(self.entries.values()))
            prepare_spare(engine_options(self.settings, any_entry.settings, any_entry.path))

    async def _preload(self) -> None:
        want = [
            e
            for e in self.entries.values()
            if e.configured
            and (e.settings.preload or e.pinned or e.name == self.default)
            and e.current is None
        ]
        if self.default in self.entries and self.entries[self.default].file is None:
            entry = self.entries[self.default]
            log.error("model %s failed: %s", entry.name, entry.error)
        loadable = [e for e in want if e.file is not None]
        results = await asyncio.gather(
            *(self.load(e.name) for e in loadable), return_exceptions=True
        )
        for entry, result in zip(loadable, results, strict=True):
            if isinstance(result, BaseException):
                log.error("model %s failed to load: %s", entry.name, result)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.catalogue.unwatch()
        for entry in self.entries.values():
            if entry.loading is not None:
                entry.loading.cancel()
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*(m.process.stop() for m in self.loaded()))
        await close_spares()

    # -- serving -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(
        self, name: str | None, keep_alive: float | None | str = "default"
    ) -> AsyncIterator[Model]:
        """The model for one request, loaded if need be, held until the request ends."""
        entry = self.resolve(name)
        model = await self._ready_model(entry)
        model.active += 1
        model.idle.clear()
        try:
            yield model
        finally:
            model.active -= 1
            model.served = True
            model.last_used = time.monotonic()
            self._set_expiry(entry, model, keep_alive)
            if model.active == 0:
                model.idle.set()
                if model.expires is not None and model.expires <= time.monotonic():
                    self._reap_now.set()  # keep_alive 0: the reaper unloads it now

    async def _ready_model(self, entry: Entry) -> Model:
        wait = self.settings.loading.wait_s
        deadline = time.monotonic() + wait
        while True:
            model = entry.current
            if model is not None and model.process.state == ModelState.READY:
                return model
            if model is not None and model.process.state == ModelState.RESTARTING:
                raise ServiceUnavailable(
                    f"model '{entry.name}' is restarting: {model.process.error}",
                    code="model_not_ready",
                    retry_after=2,
                )
            if entry.failed and entry.current is None and entry.loading is None:
                raise ServiceUnavailable(
                    f"model '{entry.name}' failed: {entry.failed}",
                    code="model_not_ready",
                    retry_after=10,
                )
            task = entry.loading or self._start_load(entry)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable(
                    f"model '{entry.name}' is still loading after {wait:.0f} s",
                    code="model_loading",
                    retry_after=5,
                )
            try:
                await asyncio.wait_for(asyncio.shield(task), left)
            except TimeoutError:
                continue

    def _set_expiry(self, entry: Entry, model: Model, keep_alive: float | None | str) -> None:
        if keep_alive == "default":
            keep_alive = self.keep_alive_of(entry)
        if entry.pinned or keep_alive is None or isinstance(keep_alive, str):
            model.expires = None
        else:
            model.expires = time.monotonic() + keep_alive

    def touch(self, entry: Entry) -> None:
        """Restart a loaded model's keep-alive from now (after its settings changed)."""
        if entry.current is not None:
            self._set_expiry(entry, entry.current, "default")

    # -- loading and unloading ---------------------------------------------------------------

    def _start_load(self, entry: Entry, replacing: Model | None = None) -> asyncio.Task[Model]:
        task = asyncio.create_task(self._load(entry, replacing), name=f"load:{entry.name}")
        entry.loading = task

        def done(t: asyncio.Task[Model]) -> None:
            if entry.loading is t:
                entry.loading = None
            if not t.cancelled():
                t.exception()  # retrieved, so asyncio does not warn: the waiters got it

        task.add_done_callback(done)
        return task

    async def load(self, name: str) -> Model:
        """Load a model now (admin API, preload); returns when it serves or raises why not."""
        entry = self.resolve(name)
        entry.load_error = None
        model = await self._ready_model(entry)
        self._set_expiry(entry, model, "default")
        return model

    async def _load(self, entry: Entry, replacing: Model | None) -> Model:
        if entry.file is None:
            raise ServiceUnavailable(
                f"model '{entry.name}' failed: {entry.error}", code="model_not_ready"
            )
        async with self._lock:
            est = self.memory.estimate(entry)
            # A swap's old version (entry.current) stays: it is serving until the new one is.
            await self.memory.make_room(entry, est)
            options = engine_options(self.settings, entry.settings, entry.file.path)
            process = self.process_factory(entry.name, options)
            model = Model(entry.name, entry.settings, process, est, file_key=entry.file_key)
            model.idle.set()
            if replacing is None:
                entry.current = model
            else:
                entry.old.append(model)  # counted in the budget while it loads
            log.info(
                "model %s: loading %s (estimated %s: weights %s, KV cache %s, other %s)",
                entry.name,
                entry.file.path,
                mib(est.total),
                mib(est.weights),
                mib(est.kv_cache),
                mib(est.compute),
            )
            started = time.monotonic()
            await model.process.start()
        if model.process.state != ModelState.READY:
            error = model.process.error or "the model process did not start"
            if entry.current is model:
                entry.current = None
            if model in entry.old:
                entry.old.remove(model)
            entry.load_error = error
            await model.process.stop()
            log.error("model %s: failed to load: %s", entry.name, error)
            self._emit(entry.name, "load_failed", error)
            raise ServiceUnavailable(
                f"model '{entry.name}' failed: {error}", code="model_not_ready"
            )
        entry.load_error = None
        self.memory.sample(model)
        log.info(
            "model %s: loaded in %.2f s (pid %s, %s resident)",
            entry.name,
            time.monotonic() - started,
            model.process.pid,
            mib(model.peak_rss),
        )
        self._set_expiry(entry, model, "default")
        if replacing is None:
            self._emit(entry.name, "load", "")
        else:
            entry.old.remove(model)
            if entry.current is replacing:
                entry.current = model
                self._emit(entry.name, "swap", "new version")
                self._drain(entry, replacing, "swapped for the new version")
            elif entry.current is None and not entry.removed:
                entry.current = model
            else:
                self._drain(entry, model, "superseded while loading")
        return model

    async def unload(self, name: str) -> None:
        """Unload a model: new requests load it again; running ones finish first."""
        entry = self.resolve(name)
        if entry.loading is not None:
            with contextlib.suppress(Exception):
                await entry.loading
        model = entry.current
        if model is not None:
            entry.current = None
            await self._drain_now(entry, model, "unloaded by request")

    async def reload(self, name: str) -> Model:
        """Load a fresh process next to the current one and switch to it (a hot swap)."""
        entry = self.resolve(name)
        entry.load_error = None
        if entry.current is None:
            return await self.load(name)
        return await self._swap(entry)

    async def _swap(self, entry: Entry) -> Model:
        old = entry.current
        if old is None or entry.file is None:
            return await self.load(entry.name)
        if entry.loading is not None:
            with contextlib.suppress(Exception):
                await entry.loading
        log.info("model %s: hot swap: loading the new version next to the old", entry.name)
        try:
            task = self._start_load(entry, replacing=old)
            return await asyncio.shield(task)
        except ServiceUnavailable as exc:
            if exc.code != "insufficient_memory" or entry.current is not old:
                raise
        # Both versions do not fit together: drain the old one first. Requests arriving
        # meanwhile wait for the new one to load (loading.wait_s), none fails.
        log.info("model %s: no room for both versions: draining the old one first", entry.name)
        task = self._start_load(entry, replacing=None)
        entry.current = None
        await self._drain_now(entry, old, "replaced (no room for both versions)")
        return await asyncio.shield(task)

    def _retire(self, entry: Entry, why: str) -> None:
        """New requests no longer get the current version; it ends once its requests do."""
        if entry.current is not None:
            model, entry.current = entry.current, None
            self._drain(entry, model, why)

    def _drain(self, entry: Entry, model: Model, why: str) -> None:
        self._spawn(self._drain_now(entry, model, why))

    async def _drain_now(self, entry: Entry, model: Model, why: str) -> None:
        model.draining = True
        if model not in entry.old:
            entry.old.append(model)
        if model.busy:
            log.info("model %s: draining %d request(s) (%s)", entry.name, model.active, why)
        while model.busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.idle.wait(), 0.5)
        pid = model.process.pid
        await model.process.stop()
        if model in entry.old:
            entry.old.remove(model)
        log.info("model %s: unloaded pid %s (%s)", entry.name, pid, why)
        self._emit(entry.name, "unload", why)
        if entry.removed and entry.current is None and not entry.old:
            self._forget(entry)

    def _remove(self, entry: Entry, why: str) -> None:
        entry.removed = True
        log.info("model %s: %s: draining and removing", entry.name, why)
        if entry.current is not None:
            self._retire(entry, why)
        elif not entry.old:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.catalogue.forget(entry)
        log.info("model %s: removed", entry.name)
        self._emit(entry.name, "remove", "")

    def _emit(self, name: str, event: str, why: str) -> None:
        for listener in self.listeners:
            try:
                listener(name, event, why)
            except Exception:  # a listener's bug must not break loading or unloading
                log.exception("model event listener failed")

    def _follow(self, change: Change) -> None:
        """Act on what the catalogue found (a scan, or a reload)."""
        entry = change.entry
        if change.kind == "remove":
            self._remove(entry, change.why)
        elif change.kind == "unusable":
            self._retire(entry, change.why)
        elif entry.current is not None:  # a new version, or new load options: a hot swap
            self._spawn(self._logged(self._swap(entry), f"hot swap of {entry.name}"))

    @staticmethod
    async def _logged(coro: Coroutine[Any, Any, object], what: str) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - logged; the old version keeps serving
            log.error("%s failed: %s", what, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run in the background; cancelled at stop."""
        task = asyncio.create_task(coro)
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    # -- keep-alive, memory measurement ------------------------------------------------------

    async def _reaper(self) -> None:
        while True:
            now = time.monotonic()
            for entry in list(self.entries.values()):
                for version in entry.versions():
                    if version.process.state == ModelState.READY:
                        self.memory.sample(version)
                model = entry.current
                if (
                    model is not None
                    and model.expires is not None
                    and model.expires <= now
                    and not model.busy
                    and not entry.pinned
                    and model.process.state == ModelState.READY
                ):
                    self._retire(entry, "keep-alive expired")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reap_now.wait(), 1.0)
            self._reap_now.clear()

    # -- settings reload (SIGHUP) -------------------------------------------------------------

    async def apply_settings(self, settings: Settings) -> None:
        """Apply new, valid settings without dropping in-flight requests.

        Models no longer configured are drained and removed (or stay as plain files of the
        directory); new ones are added (and preloaded if marked); a model whose load options
        changed is hot-swapped; other per-model changes (sampling, template) apply at once.
        Returns once new and re-tuned models serve (or failed: the old version then stays), as
        a reload is over only when its config is in force (READY=1 follows).
        """
        retunes = []

        def follow(change: Change) -> None:
            if change.kind == "retune":
                name = change.entry.name
                retunes.append(self._logged(self._swap(change.entry), f"re-tuning {name}"))
            else:
                self._follow(change)

        self.catalogue.reconfigure(settings, follow)
        await self.catalogue.scan(self._follow, initial=True)
        await asyncio.gather(self._preload(), *retunes)
        log.info("settings applied: %d model(s) known", len(self.entries))
