"""The models llmd knows and the processes that serve them.

A model is known from a [models.NAME] table in the config, from a .gguf file in models_dir,
or both (a table whose path is a file in the directory is that file, with its settings).
Each known model is an `Entry`; a loaded one has a `Model`: one model process with its
request count. Requests hold a `Model` for their whole life (`ModelManager.use`), so a hot
swap only changes which `Model` new requests get: the old one finishes its requests, then
its process ends (draining). Loading happens on demand, within a memory budget: idle models
are unloaded least recently used first to make room, and a model that cannot fit is refused
with the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llmd.engine.client import (
    EngineOptions,
    ModelProcess,
    ModelState,
    close_spares,
    prepare_spare,
)
from llmd.engine.llama import LoadOptions
from llmd.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from llmd.gguf import Estimate, GGUFError, Incomplete, ModelFile, estimate, read_model
from llmd.plan import PlanInput, make_plan
from llmd.settings import ModelSettings, Settings, parse_duration
from llmd.templates import ChatTemplate, choose_template
from llmd.watch import DirectoryWatcher, FileKey, file_key, find_models, split_parts

log = logging.getLogger("llmd.models")

MiB = 1024 * 1024
INCOMPLETE_GRACE_S = 10.0
"""A file that stays incomplete (shorter than its tensors) this long is reported truncated."""


def mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


@dataclass
class Model:
    """One loaded version of a model: its process, and the requests using it."""

    name: str
    settings: ModelSettings
    process: ModelProcess
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

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.process.num_inflight > 0

    def cost(self) -> int:
        """Bytes this model counts against the budget: measured once it has served."""
        if self.served and self.peak_rss:
            return self.peak_rss
        return max(self.estimate.total, self.peak_rss)


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


def service_memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max or v1 limit_in_bytes)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limit_file = root / path.lstrip("/") / "memory.max"
        elif "memory" in controllers.split(","):
            limit_file = root / "memory" / path.lstrip("/") / "memory.limit_in_bytes"
        else:
            continue
        try:
            value = limit_file.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:  # "max" or v1's huge number: no limit
            return int(value)
    return None


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def auto_threads(cores: int) -> tuple[int, int]:
    """(decode, prompt) threads when the config says 0.

    Decoding one token is bound by memory bandwidth, not compute: one core fewer costs little,
    and that core keeps the HTTP server and the clients from preempting llama.cpp's threads
    mid-step (on 2 cores: 1 decode thread gave 86 tok/s through the daemon, 2 gave 47; see
    docs/benchmarks.md). Reading prompts is compute-bound and gets every core.
    """
    return max(1, cores - 1), cores


def engine_options(settings: Settings, ms: ModelSettings, path: Path) -> EngineOptions:
    engine = settings.engine
    auto_decode, auto_batch = auto_threads(_physical_cores())
    load = LoadOptions(
        path=path,
        ctx_per_seq=ms.ctx_per_seq or engine.ctx_per_seq,
        parallel=ms.parallel or engine.parallel,
        batch_size=engine.batch_size,
        ubatch_size=engine.ubatch_size,
        threads=ms.threads or engine.threads or auto_decode,
        threads_batch=engine.threads_batch or auto_batch,
        flash_attn=engine.flash_attn,
        kv_type=engine.kv_type,
    )
    return EngineOptions(
        load=load,
        omp_wait_policy=engine.omp_wait_policy,
        log_level=settings.server.log_level,
        max_queue=settings.server.max_queue,
        load_timeout_s=engine.load_timeout_s,
        hang_timeout_s=engine.hang_timeout_s,
        restart_backoff_max_s=engine.restart_backoff_max_s,
    )


def estimate_for(settings: Settings, ms: ModelSettings, file: ModelFile) -> Estimate:
    load = engine_options(settings, ms, file.path).load
    return estimate(
        file,
        load.ctx_per_seq,
        load.parallel,
        min(load.ubatch_size, load.batch_size),
        load.kv_type,
    )


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


class InsufficientMemory(ServiceUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="insufficient_memory", retry_after=30)


ModelListener = Callable[[str, str, str], None]
"""(model name, event, why): events are load, load_failed, swap, unload, remove."""


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.entries: dict[str, Entry] = {}
        self.names: dict[str, str] = {}
        self.default = settings.default_model_name()
        # A share budget ("80%") is a share of what this process may use: the machine's RAM,
        # or less under a cgroup limit (systemd's MemoryMax=), so the kernel never kills a
        # model the budget allowed.
        self._total_ram = psutil.virtual_memory().total
        if (limit := service_memory_limit()) is not None and limit < self._total_ram:
            log.info("memory: this service may use %s (cgroup limit)", mib(limit))
            self._total_ram = limit
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Keyed by (model name, path): several config tables may serve one file.
        self._pending: dict[tuple[str, Path], tuple[FileKey | None, float]] = {}
        self._corrections: dict[Path, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: DirectoryWatcher | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._scan_lock = asyncio.Lock()
        self._clashes: set[Path] = set()
        self.started = False
        """True once the start-up scan and the preloads are done."""
        self.listeners: list[ModelListener] = []
        """Told of every load, load_failed, swap, unload and removal (metrics, audit log)."""
        for name, ms in settings.models.items():
            self._add_configured(name, ms)

    # -- what the rest of the daemon reads --------------------------------------------------

    @property
    def models(self) -> dict[str, Entry]:
        return self.entries

    @property
    def memory_budget_bytes(self) -> int:
        return self.settings.memory.budget_bytes(self._total_ram)

    @property
    def memory_reserve_bytes(self) -> int:
        return self.settings.memory.reserve_bytes(self._total_ram)

    def loaded(self) -> list[Model]:
        """Every model process alive: current versions and those draining."""
        out = []
        for entry in self.entries.values():
            if entry.current is not None:
                out.append(entry.current)
            out.extend(entry.old)
        return out

    def loaded_count(self) -> int:
        return sum(
            1
            for e in self.entries.values()
            if e.current is not None and e.current.process.state == ModelState.READY
        )

    def memory_used_bytes(self) -> int:
        """Memory the loaded models take, measured (estimated until first measured)."""
        return sum(m.cost() for m in self.loaded())

    def request_counts(self) -> dict[str, tuple[int, int]]:
        """Per model: (sequences running, sequences queued), from the engines' last report."""
        out = {}
        for name, entry in self.entries.items():
            running = queued = 0
            for m in [entry.current, *entry.old]:
                if m is not None and m.process.stats is not None:
                    running += m.process.stats.running
                    queued += m.process.stats.waiting
            out[name] = (running, queued)
        return out

    def servable(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.file is not None and not e.removed]

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._scan(initial=True)
        if self.settings.loading.watch:
            self._start_watcher()
        self._tasks = [
            asyncio.create_task(self._scanner(), name="models:scan"),
            asyncio.create_task(self._reaper(), name="models:reap"),
        ]
        await self._preload()
        self.started = True
        if any(e.current is None for e in self.entries.values()):
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
        results = await asyncio.gather(
            *(self.load(e.name) for e in want if e.file is not None), return_exceptions=True
        )
        for entry, result in zip([e for e in want if e.file is not None], results, strict=True):
            if isinstance(result, BaseException):
                log.error("model %s failed to load: %s", entry.name, result)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watcher is not None:
            self._watcher.stop()
        for entry in self.entries.values():
            if entry.loading is not None:
                entry.loading.cancel()
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*(m.process.stop() for m in self.loaded()))
        await close_spares()

    # -- names -------------------------------------------------------------------------------

    def _add_configured(self, name: str, ms: ModelSettings) -> Entry:
        entry = Entry(name, ms, self.settings.model_path(name), configured=True, pinned=ms.pinned)
        self.entries[name] = entry
        for alias in [name, *ms.aliases]:
            self.names[alias] = name
        return entry

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

    # -- serving -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str | None, keep_alive: float | None | str = "default") -> Any:
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
                if model.expires is not None and model.expires <= model.last_used:
                    self._wake.set()  # keep_alive 0: the reaper unloads it now

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

    def keep_alive_of(self, entry: Entry) -> float | None:
        """Seconds an idle model stays loaded; None: forever."""
        if entry.keep_alive != "default":
            return entry.keep_alive  # type: ignore[return-value]
        if entry.settings.keep_alive is not None:
            return parse_duration(entry.settings.keep_alive)
        if entry.configured and entry.settings.preload:
            return None
        return parse_duration(self.settings.loading.keep_alive)

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

    def estimate(self, entry: Entry) -> Estimate:
        assert entry.file is not None
        est = estimate_for(self.settings, entry.settings, entry.file)
        ratio = self._corrections.get(entry.file.path)
        if ratio is not None:
            # What this file really cost last time corrects the overhead part of the estimate.
            return Estimate(
                est.weights,
                est.kv_cache,
                max(0, int(est.total * ratio) - est.weights - est.kv_cache),
            )
        return est

    async def _load(self, entry: Entry, replacing: Model | None) -> Model:
        if entry.file is None:
            raise ServiceUnavailable(
                f"model '{entry.name}' failed: {entry.error}", code="model_not_ready"
            )
        async with self._lock:
            est = self.estimate(entry)
            # A swap's old version (entry.current) stays: it is serving until the new one is.
            await self._make_room(entry, est)
            options = engine_options(self.settings, entry.settings, entry.file.path)
            model = Model(
                entry.name,
                entry.settings,
                ModelProcess(entry.name, options, retry_failed_load=False),
                est,
                file_key=entry.file_key,
            )
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
        self._sample(model)
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

    async def _make_room(self, entry: Entry, est: Estimate) -> None:
        """Unload idle models (least recently used first) until `est` fits; else refuse."""
        need = est.total
        budget = self.memory_budget_bytes
        idle = sorted(
            (
                (e, e.current)
                for e in self.entries.values()
                if e.current is not None
                and e is not entry
                and not e.pinned
                and not e.current.busy
                and e.current.process.state == ModelState.READY
            ),
            key=lambda pair: pair[1].last_used,
        )
        evictable = sum(m.cost() for _, m in idle)
        while (
            self.memory_used_bytes() - evictable + need <= budget
            and idle
            and (self.memory_used_bytes() + need > budget)
        ):
            victim_entry, victim = idle.pop(0)
            if victim_entry.current is victim and not victim.busy:
                log.info(
                    "model %s: unloading (idle, least recently used) to make room for %s",
                    victim_entry.name,
                    entry.name,
                )
                victim_entry.current = None
                victim.draining = True
                await victim.process.stop()
            evictable -= victim.cost()
        used = self.memory_used_bytes()
        if used + need > budget:
            holders = ", ".join(
                f"{m.name} {mib(m.cost())}"
                + (" (busy)" if m.busy else " (pinned)" if self.entries[m.name].pinned else "")
                for m in self.loaded()
            )
            raise InsufficientMemory(
                f"model '{entry.name}' needs about {mib(need)} (weights {mib(est.weights)}, "
                f"KV cache {mib(est.kv_cache)}, other {mib(est.compute)}) but the memory "
                f"budget is {mib(budget)} and {mib(used)} is in use"
                + (f" by {holders}" if holders else "")
                + "; lower its ctx_per_seq or parallel, raise memory.budget, or unload a model"
            )
        available = psutil.virtual_memory().available
        reserve = self.memory_reserve_bytes
        if available - need < reserve:
            raise InsufficientMemory(
                f"model '{entry.name}' needs about {mib(need)} but the system has only "
                f"{mib(available)} available and llmd keeps {mib(reserve)} free "
                "(memory.reserve) so that the machine does not swap"
            )

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

    def _drain(self, entry: Entry, model: Model, why: str) -> None:
        task = asyncio.create_task(self._drain_now(entry, model, why))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

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

    def _forget(self, entry: Entry) -> None:
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
        for alias, real in list(self.names.items()):
            if real == entry.name:
                del self.names[alias]
        log.info("model %s: removed", entry.name)
        self._emit(entry.name, "remove", "")

    def _emit(self, name: str, event: str, why: str) -> None:
        for listener in self.listeners:
            try:
                listener(name, event, why)
            except Exception:  # a listener's bug must not break loading or unloading
                log.exception("model event listener failed")

    # -- keep-alive, memory measurement ------------------------------------------------------

    def _sample(self, model: Model) -> None:
        pid = model.process.pid
        if pid is None:
            return
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return
        if rss > model.peak_rss:
            model.peak_rss = rss
            entry = self.entries.get(model.name)
            if model.served and entry is not None and entry.file is not None:
                raw = estimate_for(self.settings, model.settings, entry.file).total
                self._corrections[entry.file.path] = rss / raw

    async def _reaper(self) -> None:
        while True:
            now = time.monotonic()
            for entry in list(self.entries.values()):
                for model in [entry.current, *entry.old]:
                    if model is not None and model.process.state == ModelState.READY:
                        self._sample(model)
                model = entry.current
                if (
                    model is not None
                    and model.expires is not None
                    and model.expires <= now
                    and not model.busy
                    and not entry.pinned
                    and model.process.state == ModelState.READY
                ):
                    entry.current = None
                    self._drain(entry, model, "keep-alive expired")
            await asyncio.sleep(1.0)

    # -- the models directory -----------------------------------------------------------------

    def _start_watcher(self) -> None:
        self._watcher = DirectoryWatcher(self.settings.models_dir, self._wake)
        if not self._watcher.start():
            self._watcher = None

    async def _scanner(self) -> None:
        while True:
            timeout = 0.1 if self._pending else self.settings.loading.rescan_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._scan()
            except Exception:
                log.exception("scanning %s failed", self.settings.models_dir)

    async def _scan(self, initial: bool = False) -> None:
        async with self._scan_lock:
            await self._scan_locked(initial)

    async def _scan_locked(self, initial: bool) -> None:
        """Compare the files with what is known; settle new versions; add, swap, remove."""
        found = await asyncio.to_thread(find_models, self.settings.models_dir)
        # Several tables may name one file (say, with different contexts): each is a model.
        configured: dict[Path, list[Entry]] = {}
        for e in self.entries.values():
            if e.configured:
                configured.setdefault(e.path.resolve(), []).append(e)
        seen: set[str] = set()
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
        for known_entry in self.entries.values():
            if known_entry.configured and all(n != known_entry.name for n, _ in paths):
                paths.append((known_entry.name, known_entry.path))
        now = time.monotonic()
        for name, path in paths:
            seen.add(name)
            key = await asyncio.to_thread(file_key, split_parts(path))
            entry: Entry | None = self.entries.get(name)
            if entry is not None and key == entry.file_key and (entry.file or entry.error):
                self._pending.pop((name, path), None)
                continue
            if key is None and entry is not None and entry.configured:
                self._set_file(entry, None, f"file not found: {path}", None)
                continue
            first = self._pending.get((name, path))
            if first is None or first[0] != key:
                self._pending[(name, path)] = (key, now)
                if not initial:
                    continue
            elif now - first[1] < self.settings.loading.settle_s:
                continue
            file, error, incomplete = await asyncio.to_thread(_read, path)
            pending_since = self._pending[(name, path)][1]
            if incomplete and not initial and now - pending_since < INCOMPLETE_GRACE_S:
                continue  # still being copied: not listed until complete
            self._pending.pop((name, path), None)
            if entry is None:
                entry = Entry(name, ModelSettings(path=path, preload=False), path, configured=False)
                self.entries[name] = entry
                self.names[name] = name
                log.info("model %s: found %s", name, path)
            if incomplete and error is not None and not initial:
                error = f"{error} (unchanged for {INCOMPLETE_GRACE_S:.0f} s)"
            self._set_file(entry, file, error, key)
        for entry in list(self.entries.values()):
            if not entry.configured and entry.name not in seen and not entry.removed:
                self._remove(entry, "file removed")

    def _set_file(
        self, entry: Entry, file: ModelFile | None, error: str | None, key: FileKey | None
    ) -> None:
        changed = entry.file_key is not None and key != entry.file_key
        entry.file, entry.error, entry.file_key = file, error, key
        entry.load_error = None
        if error is not None:
            log.error("model %s: %s: %s", entry.name, entry.path, error)
            if entry.current is not None:
                model, entry.current = entry.current, None
                self._drain(entry, model, "file no longer usable")
            return
        if file is not None and changed:
            log.info("model %s: new version of %s", entry.name, entry.path)
            if entry.current is not None:
                self._background(self._swap(entry), f"hot swap of {entry.name}")

    @staticmethod
    async def _logged(coro: Any, what: str) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - logged; the old version keeps serving
            log.error("%s failed: %s", what, exc)

    def _background(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(self._logged(coro, what))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    def _remove(self, entry: Entry, why: str) -> None:
        entry.removed = True
        log.info("model %s: %s: draining and removing", entry.name, why)
        if entry.current is not None:
            model, entry.current = entry.current, None
            self._drain(entry, model, why)
        elif not entry.old:
            self._forget(entry)

    # -- settings reload (SIGHUP) -------------------------------------------------------------

    async def apply_settings(self, settings: Settings) -> None:
        """Apply new, valid settings without dropping in-flight requests.

        Models no longer configured are drained and removed (or stay as plain files of the
        directory); new ones are added (and preloaded if marked); a model whose load options
        changed is hot-swapped; other per-model changes (sampling, template) apply at once.
        Returns once new and re-tuned models serve (or failed: the old version then stays), as
        a reload is over only when its config is in force (READY=1 follows).
        """
        old = self.settings
        self.settings = settings
        self.default = settings.default_model_name()
        retunes = []
        for name, gone in list(self.entries.items()):
            if gone.configured and name not in settings.models:
                self._remove(gone, "no longer in the config")
        for name, ms in settings.models.items():
            entry: Entry | None = self.entries.get(name)
            path = settings.model_path(name)
            if entry is None or entry.removed or (not entry.configured and entry.path != path):
                if entry is not None and not entry.removed:
                    self._remove(entry, "name now configured for another file")
                self._add_configured(name, ms)
                continue
            before = engine_options(old, entry.settings, entry.path)
            entry.settings, entry.configured, entry.path = ms, True, path
            entry.pinned = ms.pinned
            for alias in [name, *ms.aliases]:
                self.names[alias] = name
            for alias, real in list(self.names.items()):
                if real == name and alias not in [name, *ms.aliases]:
                    del self.names[alias]
            if entry.current is not None:
                entry.current.settings = ms
                entry.current._template_for = None
                if engine_options(settings, ms, path) != before:
                    retunes.append(self._logged(self._swap(entry), f"re-tuning {name}"))
        if old.models_dir != settings.models_dir or old.loading.watch != settings.loading.watch:
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            if settings.loading.watch:
                self._start_watcher()
        for entry in list(self.entries.values()):
            if not entry.configured and entry.path.parent != settings.models_dir:
                self._remove(entry, "models_dir changed")
        await self._scan(initial=True)
        await asyncio.gather(self._preload(), *retunes)
        log.info("settings applied: %d model(s) known", len(self.entries))

    # -- reports -----------------------------------------------------------------------------

    def describe(self, entry: Entry) -> dict[str, Any]:
        model = entry.current
        file = entry.file
        info = file.info if file else None
        load = engine_options(self.settings, entry.settings, entry.path).load
        # From the header alone, and as corrected by what this file measured before.
        est = estimate_for(self.settings, entry.settings, file) if file is not None else None
        corrected = (
            self.estimate(entry).total
            if file is not None and file.path in self._corrections
            else None
        )
        stats = model.process.stats if model else None
        now = time.monotonic()
        keep = self.keep_alive_of(entry)
        return {
            "name": entry.name,
            "aliases": entry.settings.aliases,
            "source": "config" if entry.configured else "models_dir",
            "path": str(entry.path),
            "state": entry.state(),
            "error": entry.failed,
            "pinned": entry.pinned,
            "preload": entry.configured and entry.settings.preload,
            "keep_alive_s": -1 if keep is None else keep,
            "expires_in_s": (
                round(model.expires - now, 1) if model and model.expires is not None else None
            ),
            "pid": model.process.pid if model else None,
            "file_size_bytes": file.file_size if file else None,
            "quantization": info.quantization if info else None,
            "architecture": info.architecture if info else None,
            "parameters": file.parameters if file else None,
            "context_length": info.context_length if info else None,
            "ctx_per_seq": load.ctx_per_seq,
            "parallel": load.parallel,
            "memory": {
                "estimated_bytes": est.total if est else None,
                "weights_bytes": est.weights if est else None,
                "kv_cache_bytes": est.kv_cache if est else None,
                "other_bytes": est.compute if est else None,
                "corrected_estimate_bytes": corrected,
                "measured_bytes": (model.peak_rss or None) if model else None,
            },
            "requests_in_flight": sum(m.active for m in [model, *entry.old] if m is not None),
            "running": stats.running if stats else 0,
            "queued": stats.waiting if stats else 0,
            "draining": len(entry.old),
            "loaded_at": model.process.loaded_at if model else None,
        }

    def plan(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        inputs = [
            PlanInput(
                e.name,
                e.settings,
                e.file,
                e.failed,
                e.pinned,
                e.configured and e.settings.preload,
            )
            for e in self.entries.values()
            if not e.removed
        ]
        return make_plan(self.settings, inputs, self.memory_budget_bytes, vm.total, vm.available)

    def memory_report(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {
            "budget_bytes": self.memory_budget_bytes,
            "used_bytes": self.memory_used_bytes(),
            "reserve_bytes": self.memory_reserve_bytes,
            "system_total_bytes": vm.total,
            "system_available_bytes": vm.available,
        }
