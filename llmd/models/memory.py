"""The memory side of the manager: what the loaded models use against the budget, the
measurements that correct estimates, and the room made for a load.

Which models to unload is decided by `budget.choose_victims` alone; this module reads the
catalogue into its inputs and stops the victims it names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import psutil

from llmd.engine.client import ModelState
from llmd.gguf import Estimate
from llmd.models.budget import Holder, InsufficientMemory, choose_victims, service_memory
from llmd.models.catalogue import Catalogue, Entry, Model
from llmd.models.options import estimate_for

log = logging.getLogger("llmd.models")


class Memory:
    """The budget applied to the catalogue's loaded models."""

    def __init__(self, catalogue: Catalogue, read_rss: Callable[[int | None], int | None]):
        self.catalogue = catalogue
        self.read_rss = read_rss
        """A process's resident memory by pid (None: gone or unreadable)."""
        self.total = service_memory()
        """What this service may use: shares in memory.budget and .reserve are of this."""
        self._corrections: dict[Path, float] = {}
        """Per file: what it really cost when it last served, over its header's estimate."""

    @property
    def budget_bytes(self) -> int:
        return self.catalogue.settings.memory.budget_bytes(self.total)

    @property
    def reserve_bytes(self) -> int:
        return self.catalogue.settings.memory.reserve_bytes(self.total)

    def used_bytes(self) -> int:
        """Memory the loaded models take, measured (estimated until first measured)."""
        return sum(m.cost() for e in self.catalogue.entries.values() for m in e.versions())

    def estimate(self, entry: Entry) -> Estimate:
        """The memory a load of `entry` will take (corrected by what it measured before)."""
        assert entry.file is not None
        corrected = self.corrected_estimate(entry)
        if corrected is not None:
            return corrected
        return estimate_for(self.catalogue.settings, entry.settings, entry.file)

    def corrected_estimate(self, entry: Entry) -> Estimate | None:
        """The header's estimate corrected by what this file really cost when it last
        served; None until it has."""
        if entry.file is None or (ratio := self._corrections.get(entry.file.path)) is None:
            return None
        est = estimate_for(self.catalogue.settings, entry.settings, entry.file)
        # The measurement corrects the overhead part: weights and KV cache are known exactly.
        overhead = max(0, int(est.total * ratio) - est.weights - est.kv_cache)
        return Estimate(est.weights, est.kv_cache, overhead)

    def sample(self, model: Model) -> None:
        """Read a loaded model's resident memory: its peak is what it costs."""
        rss = self.read_rss(model.process.pid)
        if rss is None or rss <= model.peak_rss:
            return
        model.peak_rss = rss
        entry = self.catalogue.entries.get(model.name)
        if model.served and entry is not None and entry.file is not None:
            raw = estimate_for(self.catalogue.settings, model.settings, entry.file).total
            self._corrections[entry.file.path] = rss / raw

    async def make_room(self, entry: Entry, need: Estimate) -> None:
        """Unload the idle models `choose_victims` picks until `need` fits; else refuse."""
        while True:
            choice = choose_victims(
                need,
                self.budget_bytes,
                self.holders(entry),
                int(psutil.virtual_memory().available),
                self.reserve_bytes,
            )
            if choice.refusal is not None:
                raise InsufficientMemory(choice.refusal.message(entry.name))
            if choice.fits:
                return
            for name in choice.victims:
                victim_entry = self.catalogue.entries.get(name)
                victim = victim_entry.current if victim_entry is not None else None
                if victim_entry is None or victim is None or victim.busy:
                    continue  # taken by a request while an earlier victim stopped: ask again
                log.info(
                    "model %s: unloading (idle, least recently used) to make room for %s",
                    name,
                    entry.name,
                )
                victim_entry.current = None
                victim.draining = True
                await victim.process.stop()

    def holders(self, loading: Entry) -> list[Holder]:
        """Every loaded version as the budget sees it, while `loading` is to be loaded."""
        return [
            Holder(
                m.name,
                m.cost(),
                m.last_used,
                busy=m.busy,
                pinned=e.pinned,
                unloadable=(
                    m is e.current and e is not loading and m.process.state == ModelState.READY
                ),
            )
            for e in self.catalogue.entries.values()
            for m in e.versions()
        ]
