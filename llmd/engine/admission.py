"""How a waiting request is admitted to the batch.

At the start of every engine step (`Scheduler.step`), while slots are free, two choices:

1. Which waiting request goes next: start-time fair queuing over tenants (API keys, or
   client addresses without keys). A tenant's next request is tagged
   `max(clock, tenant's last tag) + 1/weight` and the smallest tag goes first: round-robin
   across tenants, weighted, FIFO within one. A request needs a free slot per choice (`n`);
   when the next one does not fit, admission stops for this step (no overtaking).
2. Which slots it gets: the one holding the longest cached prefix of its prompt (prefix
   reuse), kept next to the running slots (each run of consecutive busy slots costs a pass
   over the weights per step), evicting the least recently used cache.

An admitted request comes out with one `Sequence` per choice, each bound to its slot with
its sampler, and `n_prefilled` set to the tokens found cached.
"""

from __future__ import annotations

import random
from collections import deque

from llmd.engine.backend import Backend
from llmd.engine.sequence import RequestState, Sequence, Slot
from llmd.engine.speculate import StepCosts
from llmd.engine.text import TextStream

# A cached prefix shorter than this is not reused: copying it costs about as much as reading
# it. A chat template's preamble (24 tokens for SmolLM2) is worth it: ~80 ms of prompt
# reading against ~5 ms for a copy (docs/benchmarks.md).
MIN_SHARED_PREFIX = 16

# A free slot's history is cut down to a shared prefix in place only when the prefix is at
# least this long or is all of it; a shorter one is copied, so reusing a chat template's
# preamble never costs another conversation its history.
MIN_IN_PLACE_PREFIX = 64

# A cache shorter than this is not moved out of the way to survive eviction (`_evict`): a
# copy takes the whole KV stream (~5 ms for SmolLM2 at 2,048 cells, more for larger models),
# too much for what is mostly a chat template's preamble, found in many slots anyway.
MIN_KEPT_CACHE = 64


class Admission:
    """The slots and the queue of requests waiting for them."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.slots = [Slot(i) for i in range(backend.n_parallel)]
        self.waiting: deque[RequestState] = deque()
        # Start-time fair queuing: the virtual clock, and each tenant's last tag.
        self._fair_clock = 0.0
        self._fair_tags: dict[str, float] = {}

    def free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is None]

    def admit(self) -> list[RequestState]:
        """Admit waiting requests while there are slots for them; each comes back bound to
        its slots and ready to run."""
        free = self.free_slots()
        chosen = self._choose(len(free))
        # Requests admitted together are placed longest cached prefix first, and each keeps
        # off the free slots holding the prefixes of those still to be placed: in a burst, a
        # new prompt must not wipe the history a returning conversation behind it would reuse.
        # Embed requests need every token's hidden state: they reuse no cached prefix.
        found = {
            id(state): (None, 0) if state.req.embed else self._find_prefix(state.prompt)
            for state in chosen
        }
        chosen.sort(key=lambda state: -found[id(state)][1])
        for i, state in enumerate(chosen):
            # (A later request sharing this one's donor matches no more of it than this one
            # does, so this one may still cut that donor down to its own prefix.)
            keep = set()
            for later in chosen[i + 1 :]:
                donor = found[id(later)][0]
                if donor is not None and donor.seq is None and donor is not found[id(state)][0]:
                    keep.add(donor.id)
            leader_slot, cached = self._place(state.prompt, free, keep, not state.req.embed)
            free.remove(leader_slot)
            slots = [leader_slot]
            while len(slots) < state.req.n:
                slot = self._best_free(free, taken=slots, keep=keep)
                free.remove(slot)
                self._evict(slot, free, keep, None)
                slots.append(slot)
            state.n_prefilled = cached
            self._bind(state, slots)
        return chosen

    # -- which request: fair share across tenants ------------------------------------------

    def _choose(self, room: int) -> list[RequestState]:
        """Take waiting requests off the queue, fairly, while `room` slots hold them."""
        chosen: list[RequestState] = []
        while self.waiting:
            state, tag = self._next_waiting()
            if room < state.req.n:
                break
            room -= state.req.n
            self.waiting.remove(state)
            self._fair_tags[state.req.tenant] = tag
            self._fair_clock = tag - 1.0 / max(1, state.req.weight)
            if len(self._fair_tags) > 1024:  # forget tenants that are behind the clock
                self._fair_tags = {t: v for t, v in self._fair_tags.items() if v > self._fair_clock}
            chosen.append(state)
        return chosen

    def _next_waiting(self) -> tuple[RequestState, float]:
        """The waiting request to admit next: round-robin across tenants (API keys), weighted,
        FIFO within a tenant. One key with a hundred requests waiting cannot starve another's
        single request: that one goes at the next free slot, whatever the queue holds."""
        best: RequestState | None = None
        best_tag = 0.0
        seen: set[str] = set()
        for state in self.waiting:
            tenant = state.req.tenant
            if tenant in seen:
                continue
            seen.add(tenant)
            start = max(self._fair_clock, self._fair_tags.get(tenant, 0.0))
            tag = start + 1.0 / max(1, state.req.weight)
            if best is None or tag < best_tag:
                best, best_tag = state, tag
        assert best is not None
        return best, best_tag

    # -- which slots: prefix reuse, busy slots together, LRU eviction ------------------------

    def _bind(self, state: RequestState, slots: list[Slot]) -> None:
        """One sequence per choice, each in its slot with its own sampler (seeded `seed`,
        `seed + 1`, ... so that choices differ but a seeded request repeats)."""
        seed = state.req.sampling.seed
        base = seed if seed is not None else random.getrandbits(32)
        for index, slot in enumerate(slots):
            sampler = None
            if not state.req.embed:
                sampler = self.backend.new_sampler(state.req.sampling, base + index)
            seq = Sequence(state, index, slot, sampler, TextStream(state.req.stop))
            slot.seq = seq
            state.seqs.append(seq)

    def _find_prefix(self, prompt: list[int]) -> tuple[Slot | None, int]:
        """The slot holding the longest useful cached prefix of `prompt`, and its length."""
        limit = len(prompt) - 1  # the last prompt token is always decoded, for its logits
        donor, length = None, 0
        for slot in sorted(self.slots, key=lambda s: (s.seq is None, s.last_used)):
            n = _common_prefix(slot.cached, prompt, limit)
            if n >= length and n > 0:
                donor, length = slot, n
        if length < min(MIN_SHARED_PREFIX, limit):
            return None, 0
        return donor, length

    def _place(
        self, prompt: list[int], free: list[Slot], keep: set[int], reuse: bool
    ) -> tuple[Slot, int]:
        """Pick a slot for a prompt and fill it with the longest cached prefix to be found
        (with `reuse`), leaving the caches of the free slots in `keep` as they are if at all
        possible."""
        donor, length = self._find_prefix(prompt) if reuse else (None, 0)
        target = self._best_free(free, taken=[], keep=keep)
        in_place = donor is target or (
            donor is not None
            and donor.id not in keep
            and self._runs([donor]) <= self._runs([target])
            and (length >= MIN_IN_PLACE_PREFIX or length == len(donor.cached))
        )
        if donor is not None and donor.seq is None and in_place:
            # The prefix is in a free slot that keeps the running slots together: use it.
            if length < len(donor.cached) and not self.backend.seq_rm(donor.id, length, -1):
                self.clear(donor)
                return donor, 0
            del donor.cached[length:]
            return donor, length
        self._evict(target, free, keep, donor)
        if donor is not None:
            # Copy the prefix next to the running slots rather than decode it where it lies:
            # a copy costs ~5 ms once, a gap between running slots ~20 ms every step.
            # Copies between KV streams must take the whole sequence; trim it afterwards.
            self.backend.seq_cp(donor.id, target.id, -1, -1)
            if not self.backend.seq_rm(target.id, length, -1):
                self.clear(target)
                return target, 0
            target.cached = prompt[:length]
        return target, length

    def _evict(self, target: Slot, free: list[Slot], keep: set[int], donor: Slot | None) -> None:
        """Empty `target` for a new sequence. Slots are chosen side by side, not least
        recently used first; so if another free slot holds an older cache, `target`'s moves
        there (a ~5 ms copy) and the older one goes: eviction stays least recently used."""
        older = [
            s
            for s in free
            if s is not target and s is not donor and s.id not in keep
            if s.last_used < target.last_used
        ]
        if len(target.cached) >= MIN_KEPT_CACHE and older:
            victim = min(older, key=lambda s: s.last_used)
            self.clear(victim)
            self.backend.seq_cp(target.id, victim.id, -1, -1)
            victim.cached = target.cached
            victim.last_used = target.last_used
        self.clear(target)

    def _best_free(self, free: list[Slot], taken: list[Slot], keep: set[int]) -> Slot:
        """The free slot for a new sequence: one whose cache is not kept for a request
        being admitted, then the one that leaves the fewest runs of consecutive busy slots
        (each run is one more pass over the weights per step, see `step`), then the one
        whose cache was used least recently."""
        return min(free, key=lambda s: (s.id in keep, self._runs([*taken, s]), s.last_used))

    def _runs(self, extra: list[Slot]) -> int:
        """Runs of consecutive slot ids among the busy slots plus `extra`."""
        busy = {s.id for s in self.slots if s.seq is not None} | {s.id for s in extra}
        return sum(1 for i in busy if i - 1 not in busy)

    def gap_fillers(
        self, steps: list[tuple[int, int]], costs: StepCosts, room: int, limit: int
    ) -> list[Slot]:
        """Free slots between this step's slots worth one filler token each: a free slot
        between running ones splits the step into one more micro-batch, one more pass over
        the weights (Gemma-3, 16 streams: 111-117 ms a step in one run, 149-158 ms with 15
        in two), where a token in it costs one row more (~5 ms). A filler goes at the end of
        the free slot's cache and is removed after the step, so what the slot holds stays.

        `steps` are the step's (slot, tokens); a hole (free slots side by side between two
        of them) is filled when the cost model prices the step cheaper with it, while the
        batch has `room` and each of its slots has a cell left under `limit`."""
        ordered = sorted(steps)
        used = {slot for slot, _ in ordered}
        tokens = sum(n for _, n in ordered)
        best = costs.time(tokens, len(costs.micro_batches(ordered)))
        chosen: list[Slot] = []
        hole: list[Slot] = []
        for slot in self.slots[ordered[0][0] + 1 : ordered[-1][0] + 1] if ordered else []:
            if slot.id not in used and slot.seq is None:
                hole.append(slot)
                continue
            if slot.id in used and hole and len(hole) <= room:
                if all(len(s.cached) < limit for s in hole):
                    trial = sorted([*ordered, *((s.id, 1) for s in hole)])
                    price = costs.time(tokens + len(hole), len(costs.micro_batches(trial)))
                    if price < best:
                        ordered, best = trial, price
                        tokens += len(hole)
                        room -= len(hole)
                        chosen += hole
            hole = []  # a busy slot without tokens this step also ends a hole
        return chosen

    def clear(self, slot: Slot) -> None:
        """Forget a slot's cache (its KV cells, and what they held)."""
        self.backend.seq_rm(slot.id, -1, -1)
        slot.cached = []


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    # Whole chunks first (list slices compare in C): every admission compares its prompt
    # with every slot, and a shared 1,000-token system prompt must not cost milliseconds.
    while i + 64 <= n and a[i : i + 64] == b[i : i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i
