"""One status view of the models, read from the manager in one place.

Every report renders it: /ready and /api/v1/health (`llmd.server.health`), the admin API
(`llmd.server.admin`), the Prometheus collector (`llmd.metrics`) and the systemd status line
(`llmd.systemd`). A `ModelStatus` is one model: what the catalogue and the settings say
about it, its current version (the process new requests get) and the other versions still
alive; a `MemoryStatus` is the budget and the machine; an `Overview` is both for every model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from llmd.engine.client import ModelState
from llmd.gguf import Estimate
from llmd.models.budget import rss
from llmd.models.catalogue import Entry, Model
from llmd.models.manager import ModelManager
from llmd.models.options import engine_options, estimate_for
from llmd.plan import PlanInput, make_plan


@dataclass(frozen=True, kw_only=True)
class ProcessStatus:
    """One loaded version of a model: its process and what its engine last reported.

    The defaults (here and in `ModelStatus`) describe a ready process with nothing to do, so
    that a view can be written by hand, as tests do."""

    pid: int | None = None
    state: str = ModelState.READY.value
    error: str | None = None
    """Why the process failed or restarts."""
    restarts: int = 0
    loaded_at: float | None = None
    """time.time() of its first successful load."""
    slots: int = 0
    """Sequences it decodes together (parallel)."""
    queue_limit: int = 0
    """Sequences that may wait beyond the slots."""
    ctx_per_seq: int = 0
    """What the engine holds inputs to (less than configured for an encoder-only model)."""
    model_bytes: int | None = None
    flash_attn: str = ""
    """"on", "off" or (llama.cpp's choice) "auto" as loaded; blank until then."""
    batch_invariant: bool = False
    """Loaded with `engine.batch_invariant` (llmd/engine/invariance.py)."""
    exact_steps: str = ""
    """When its steps are shaped for exact logits: "always", "alone" or "" (never)."""
    requests_held: int = 0
    """Requests holding this version, from admission to their last byte."""
    requests_in_flight: int = 0
    """Requests submitted to the engine, unfinished."""
    running: int = 0
    """Sequences being decoded (0 unless ready: after a crash the last report is stale)."""
    waiting: int = 0
    """Sequences queued for a slot (0 unless ready)."""
    kv_cells_used: int = 0
    kv_cells_total: int = 0
    engine_steps: int = 0
    engine_tokens_decoded: int = 0
    speculative_drafted: int = 0
    engine_fillers: int = 0
    speculative_accepted: int = 0
    """Counted by the engine process since it started (a restart resets them)."""
    rss_bytes: int | None = None
    """Resident memory now."""
    peak_rss_bytes: int = 0
    """The highest resident memory sampled (what it costs against the budget)."""
    estimated_bytes: int = 0
    """The estimate it was loaded with."""
    expires_in_s: float | None = None
    """Seconds until an idle model is unloaded; None: kept."""


@dataclass(frozen=True, kw_only=True)
class ModelStatus:
    """One model llmd knows, loaded or not."""

    name: str
    state: str
    """Entry.state(): a process state, or unloaded, pending, unloading, failed."""
    aliases: list[str] = field(default_factory=list)
    source: str = "models_dir"
    """config: from a [models.NAME] table; models_dir: a file found in the directory."""
    path: str = ""
    error: str | None = None
    """Why the file cannot be served, or why its last load failed."""
    pinned: bool = False
    preload: bool = False
    keep_alive_s: float | None = None
    """Seconds an idle model stays loaded; None: forever."""
    file_size_bytes: int | None = None
    quantization: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    """The trained context, from the file's header."""
    ctx_per_seq: int = 0
    """Configured: the context of each sequence."""
    parallel: int = 0
    """Configured: the sequences decoded together."""
    max_queue: int = 0
    """Configured: the sequences that may wait beyond the slots."""
    estimate: Estimate | None = None
    """From the file's header alone."""
    corrected_estimate_bytes: int | None = None
    """The estimate corrected by what this file measured before (None: not measured yet)."""
    current: ProcessStatus | None = None
    """The version new requests get."""
    others: tuple[ProcessStatus, ...] = ()
    """Versions draining, and in a hot swap the new one while it loads."""

    @property
    def process(self) -> ProcessStatus | None:
        """The process health and metrics read: the current one, else the oldest other."""
        return self.current or (self.others[0] if self.others else None)

    @property
    def live(self) -> ProcessStatus:
        """`process`, or an empty reading (nothing running) when there is none."""
        return self.process or _NONE

    @property
    def loaded(self) -> bool:
        return self.state == ModelState.READY.value

    @property
    def slots(self) -> int:
        return self.process.slots if self.process else self.parallel

    @property
    def queue_limit(self) -> int:
        return self.process.queue_limit if self.process else self.max_queue

    @property
    def engine_ctx_per_seq(self) -> int:
        """What the engine holds inputs to: the current version's, else the configured context
        (a version that only drains no longer takes requests)."""
        return self.current.ctx_per_seq if self.current else self.ctx_per_seq

    @property
    def estimated_bytes(self) -> int | None:
        """What the process was loaded with, or what a load would be estimated at now."""
        if self.process is not None:
            return self.process.estimated_bytes
        if self.corrected_estimate_bytes is not None:
            return self.corrected_estimate_bytes
        return self.estimate.total if self.estimate else None

    @property
    def saturated(self) -> bool:
        """True when a new request would be refused with server_busy (queue full)."""
        live = self.live
        in_use = max(live.requests_in_flight, live.running + live.waiting)
        return self.loaded and in_use >= self.slots + self.queue_limit

    @property
    def versions(self) -> tuple[ProcessStatus, ...]:
        return ((self.current,) if self.current else ()) + self.others


_NONE = ProcessStatus(state=ModelState.STOPPED.value)


@dataclass(frozen=True, kw_only=True)
class MemoryStatus:
    """The models' memory budget, and the machine's."""

    budget_bytes: int
    """The models' memory budget."""
    used_bytes: int
    """What the loaded models count against the budget (measured, else estimated)."""
    reserve_bytes: int = 0
    """What must stay available after a load."""
    daemon_rss_bytes: int | None = None
    system_total_bytes: int = 0
    system_available_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class Overview:
    """Every model and the memory, at one moment."""

    models: list[ModelStatus]
    memory: MemoryStatus
    default_model: str | None = None


def process_status(manager: ModelManager, model: Model, now: float) -> ProcessStatus:
    p = model.process
    stats = p.stats
    live = stats if stats is not None and p.state == ModelState.READY else None
    return ProcessStatus(
        pid=p.pid,
        state=p.state.value,
        error=p.error,
        restarts=p.restarts,
        loaded_at=p.loaded_at,
        slots=p.options.load.parallel,
        queue_limit=p.options.max_queue,
        ctx_per_seq=p.info.ctx_per_seq if p.info else p.options.load.ctx_per_seq,
        model_bytes=p.info.model_bytes if p.info else None,
        flash_attn=p.info.flash_attn if p.info else "",
        batch_invariant=p.options.load.batch_invariant,
        exact_steps=p.info.exact_steps if p.info else "",
        requests_held=model.active,
        requests_in_flight=p.num_inflight,
        running=live.running if live else 0,
        waiting=live.waiting if live else 0,
        kv_cells_used=live.kv_cells_used if live else 0,
        kv_cells_total=live.kv_cells_total if live else 0,
        engine_steps=stats.steps if stats else 0,
        engine_tokens_decoded=stats.tokens_decoded if stats else 0,
        speculative_drafted=stats.drafted if stats else 0,
        engine_fillers=stats.fillers if stats else 0,
        speculative_accepted=stats.accepted if stats else 0,
        rss_bytes=manager.memory.read_rss(p.pid),
        peak_rss_bytes=model.peak_rss,
        estimated_bytes=model.estimate.total,
        expires_in_s=round(model.expires - now, 1) if model.expires is not None else None,
    )


def model_status(manager: ModelManager, entry: Entry) -> ModelStatus:
    """What every report says about one model."""
    now = time.monotonic()
    file = entry.file
    info = file.info if file else None
    options = engine_options(manager.settings, entry.settings, entry.path)
    corrected = manager.memory.corrected_estimate(entry)
    current = entry.current
    return ModelStatus(
        name=entry.name,
        state=entry.state(),
        aliases=entry.settings.aliases,
        source="config" if entry.configured else "models_dir",
        path=str(entry.path),
        error=entry.failed,
        pinned=entry.pinned,
        preload=entry.configured and entry.settings.preload,
        keep_alive_s=manager.keep_alive_of(entry),
        file_size_bytes=file.file_size if file else None,
        quantization=info.quantization if info else None,
        architecture=info.architecture if info else None,
        parameters=file.parameters if file else None,
        context_length=info.context_length if info else None,
        ctx_per_seq=options.load.ctx_per_seq,
        parallel=options.load.parallel,
        max_queue=options.max_queue,
        estimate=estimate_for(manager.settings, entry.settings, file) if file else None,
        corrected_estimate_bytes=corrected.total if corrected else None,
        current=process_status(manager, current, now) if current else None,
        others=tuple(process_status(manager, m, now) for m in entry.old),
    )


def memory_status(manager: ModelManager) -> MemoryStatus:
    vm = psutil.virtual_memory()
    return MemoryStatus(
        budget_bytes=manager.memory_budget_bytes,
        used_bytes=manager.memory_used_bytes(),
        reserve_bytes=manager.memory_reserve_bytes,
        daemon_rss_bytes=rss(os.getpid()),
        system_total_bytes=int(vm.total),
        system_available_bytes=int(vm.available),
    )


def overview(manager: ModelManager) -> Overview:
    return Overview(
        models=[model_status(manager, e) for e in manager.entries.values()],
        memory=memory_status(manager),
        default_model=manager.default,
    )


def plan(manager: ModelManager) -> dict[str, Any]:
    """`llmd models plan` for the models the manager knows: which fit together, and how."""
    vm = psutil.virtual_memory()
    inputs = [
        PlanInput(
            e.name, e.settings, e.file, e.failed, e.pinned, e.configured and e.settings.preload
        )
        for e in manager.entries.values()
        if not e.removed
    ]
    return make_plan(manager.settings, inputs, manager.memory_budget_bytes, vm.total, vm.available)
