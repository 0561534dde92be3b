"""The memory budget: what this service may use, what a loaded model costs, and which idle
models to unload so that another one fits.

`choose_victims` is the one place that decides what is unloaded to make room, and it is pure:
the manager describes the loaded processes as `Holder`s, stops the victims the `Choice` names
(least recently used idle ones first) and raises the `Refusal` it carries when nothing can make
room, with the numbers the operator needs to fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from llmd.errors import ServiceUnavailable
from llmd.gguf import Estimate

log = logging.getLogger("llmd.models")

MiB = 1024 * 1024


def mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


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


def service_memory() -> int:
    """Bytes this service may use: the machine's RAM, or less under a cgroup limit.

    A share budget ("80%") is a share of this, so that under systemd's MemoryMax= the kernel
    never kills a model the budget allowed."""
    total = int(psutil.virtual_memory().total)
    if (limit := service_memory_limit()) is not None and limit < total:
        log.info("memory: this service may use %s (cgroup limit)", mib(limit))
        return limit
    return total


class _RSS:
    """psutil.Process objects cached by pid: building one per reading costs more than reading."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def __call__(self, pid: int | None) -> int | None:
        if pid is None:
            return None
        proc = self._procs.get(pid)
        try:
            if proc is None:
                # A new process: those that ended are never read again, so drop them now
                # (model processes start rarely; the cache stays as small as what runs).
                self._procs = {p: c for p, c in self._procs.items() if c.is_running()}
                proc = self._procs[pid] = psutil.Process(pid)
            return int(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None


rss = _RSS()
"""Resident memory of a process now (None: no such process, or unreadable)."""


def cost(estimated: int, peak_rss: int, served: bool) -> int:
    """Bytes a loaded model counts against the budget: its measured peak once it has served
    (a load alone does not touch every page it will use), until then the larger of the
    estimate and what was measured."""
    if served and peak_rss:
        return peak_rss
    return max(estimated, peak_rss)


class InsufficientMemory(ServiceUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="insufficient_memory", retry_after=30)


@dataclass(frozen=True)
class Holder:
    """A loaded model process, as the budget sees it."""

    name: str
    cost: int
    """Bytes it counts against the budget (`cost`)."""
    last_used: float = 0.0
    """When a request last let go of it (monotonic): the least recent goes first."""
    busy: bool = False
    """Requests hold it or run in it: it is never unloaded for room."""
    pinned: bool = False
    """Kept loaded by the operator: never unloaded for room."""
    unloadable: bool = False
    """The ready, current version of another model than the one to load. Versions draining
    or still loading, and the model being loaded itself (a hot swap), only count."""

    @property
    def is_idle(self) -> bool:
        """May be unloaded to make room."""
        return self.unloadable and not self.busy and not self.pinned


@dataclass(frozen=True)
class Refusal:
    """Why a model cannot be loaded now, with the numbers the message gives."""

    reason: Literal["budget", "reserve"]
    need: Estimate
    budget: int
    used: int
    """Bytes the loaded models count against the budget."""
    holders: tuple[Holder, ...] = ()
    """The loaded models (reason "budget"), named in the message with their cost."""
    available: int = 0
    """The system's available memory (reason "reserve")."""
    reserve: int = 0
    """Memory that must stay available after a load (memory.reserve)."""

    def message(self, model: str) -> str:
        need = self.need
        if self.reason == "reserve":
            return (
                f"model '{model}' needs about {mib(need.total)} but the system has only "
                f"{mib(self.available)} available and llmd keeps {mib(self.reserve)} free "
                "(memory.reserve) so that the machine does not swap"
            )
        holders = ", ".join(
            f"{h.name} {mib(h.cost)}" + (" (busy)" if h.busy else " (pinned)" if h.pinned else "")
            for h in self.holders
        )
        return (
            f"model '{model}' needs about {mib(need.total)} (weights {mib(need.weights)}, "
            f"KV cache {mib(need.kv_cache)}, other {mib(need.compute)}) but the memory "
            f"budget is {mib(self.budget)} and {mib(self.used)} is in use"
            + (f" by {holders}" if holders else "")
            + "; lower its ctx_per_seq or parallel, raise memory.budget, or unload a model"
        )


@dataclass(frozen=True)
class Choice:
    """What `choose_victims` decided: unload `victims` (in this order), refuse, or load."""

    victims: tuple[str, ...] = ()
    """Names of the models whose current version to unload first."""
    refusal: Refusal | None = None

    @property
    def fits(self) -> bool:
        return not self.victims and self.refusal is None


def choose_victims(
    need: Estimate, budget: int, holders: Sequence[Holder], available: int, reserve: int
) -> Choice:
    """Which idle models to unload so that a model needing `need` fits in `budget`.

    Idle models go least recently used first, only as many as it takes, and none at all when
    unloading every idle one would still not make room (they keep serving; the load is
    refused). Once the budget has room, the system must keep `reserve` bytes available after
    the load. Unloading takes time, so the caller asks again after stopping the victims: what
    it then reads (requests may have arrived, memory been freed) decides the rest.
    """
    used = sum(h.cost for h in holders)
    if used + need.total <= budget:
        if available - need.total < reserve:
            return Choice(refusal=Refusal("reserve", need, budget, used, (), available, reserve))
        return Choice()
    idle = sorted((h for h in holders if h.is_idle), key=lambda h: h.last_used)
    if used - sum(h.cost for h in idle) + need.total > budget:
        return Choice(refusal=Refusal("budget", need, budget, used, tuple(holders)))
    victims = []
    for holder in idle:
        if used + need.total <= budget:
            break
        victims.append(holder.name)
        used -= holder.cost
    return Choice(victims=tuple(victims))
