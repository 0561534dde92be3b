"""How many draft tokens each sequence puts into a step: a choice from measured step costs and
each sequence's recent acceptance, so that speculation is used where it pays and not elsewhere.

A step's time grows with its tokens: T(n) = a + b*n. On a CPU `a` (reading every weight once,
the threads' start) is the larger part: one decode token ~20 ms, a step of 2 ~21-27 ms, each
further token ~6-8 ms (SmolLM2 on the 2-core box, docs/speculative.md). A sequence whose
drafts are accepted with probability `alpha` each gains alpha^j tokens from its j-th draft
token (it counts only if the j-1 before it were accepted), which costs `b`. The step's
throughput N/T (expected tokens over time) rises with that draft token exactly when
alpha^j > b*N/T. So draft tokens are added, best first across all sequences, while the next
one clears the bar, which rises as the step grows: with 16 streams the step is already long
and drafting stops unless nearly every draft is accepted.

`a` and `b` are fitted to the steps this engine actually runs (decay-weighted least squares
over steps that read no prompt), starting from a probe of steps of 1, 2 and 9 tokens at load.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from llmd.engine.backend import Backend

# Weight of one step in the fit decays by this factor per later step (~200 steps' memory).
COST_DECAY = 0.995
# Steps larger than this are left out of the fit: the line is for a step's first tokens.
FIT_MAX_TOKENS = 256
# Acceptance of a sequence's drafts: a decaying count, started from the model's average
# with this weight in draft tokens (so a new sequence is judged by its own drafts soon).
ACCEPT_DECAY = 0.9
PRIOR_WEIGHT = 4.0
# The model's acceptance before any draft was checked: optimistic, so that drafting starts
# and is measured (a guess below the bar would never be tested); two refusals bring a
# sequence's estimate near the bar for one stream.
FIRST_GUESS = (0.8, 0.8)


class StepCosts:
    """What a step of n tokens takes: T(1) apart, T(n) = a + b*n for n >= 2, both fitted to
    measured steps. A step of one token runs on llama.cpp's decode threads and any larger one
    on its prompt threads; what the switch costs depends on the box and its OpenMP waits
    (bench/spec_steps.py, SmolLM2 on 2 cores: 20 ms for one token, 47 for two with threads
    that sleep at once, 21-27 with `engine.omp_spin_count`), so a line through one-token
    steps could make a single stream's first draft token look cheaper than it is."""

    def __init__(self, a: float, b: float, single: float | None = None) -> None:
        # The probe's points stand as prior observations, with the weight of a few steps.
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0
        for n in (2, 9):
            self._add(n, a + b * n, 4.0)
        self._single = single if single is not None else a + b

    def observe(self, n: int, seconds: float) -> None:
        if n > FIT_MAX_TOKENS:
            return
        if n == 1:
            self._single = self._single * 0.95 + seconds * 0.05
            return
        d = COST_DECAY
        self._sw, self._sx, self._sy = self._sw * d, self._sx * d, self._sy * d
        self._sxx, self._sxy = self._sxx * d, self._sxy * d
        self._add(n, seconds, 1.0)

    def _add(self, n: int, t: float, w: float) -> None:
        self._sw += w
        self._sx += w * n
        self._sy += w * t
        self._sxx += w * n * n
        self._sxy += w * n * t

    def line(self) -> tuple[float, float]:
        """(a, b): fixed cost and cost per token of a step of two or more tokens."""
        var = self._sxx * self._sw - self._sx * self._sx
        b = (self._sxy * self._sw - self._sx * self._sy) / var if var > 0 else 0.0
        b = max(b, 0.0)
        a = max((self._sy - b * self._sx) / self._sw, 1e-6)
        return a, b

    def time(self, n: int) -> float:
        if n == 1:
            return self._single
        a, b = self.line()
        return a + b * n


@dataclass
class Acceptance:
    """How often a sequence's draft tokens were confirmed, decaying: the first draft token of a
    step apart from the ones after it. Copied text is confirmed for long runs and refused where
    it ends (the edit, the next question): after a confirmed token the next one is far likelier
    to hold than the first was, and a single rate would undervalue deep drafts exactly where
    they pay."""

    first_ok: float = 0.0
    first_seen: float = 0.0
    next_ok: float = 0.0
    next_seen: float = 0.0

    def alpha(self, prior: tuple[float, float]) -> tuple[float, float]:
        """(probability the first draft token holds, probability each later one holds once
        the one before it did), each with `prior` as PRIOR_WEIGHT observations."""
        first = (self.first_ok + PRIOR_WEIGHT * prior[0]) / (self.first_seen + PRIOR_WEIGHT)
        then = (self.next_ok + PRIOR_WEIGHT * prior[1]) / (self.next_seen + PRIOR_WEIGHT)
        return first, then

    def idle(self) -> None:
        """A step passed: old evidence fades whether or not the sequence drafted, so one that
        stopped drafting after a run of misses tries again a few steps later (the text it
        writes may have come to a part it can copy)."""
        self.first_ok *= ACCEPT_DECAY
        self.first_seen *= ACCEPT_DECAY
        self.next_ok *= ACCEPT_DECAY
        self.next_seen *= ACCEPT_DECAY

    def record_first(self, right: bool) -> None:
        """A lookup not put into the step, judged by the token that came."""
        self.first_seen += 1
        self.first_ok += 1 if right else 0

    def record(self, accepted: int, rejected: bool) -> None:
        """One verification: `accepted` drafts confirmed, then one refused (or none was: all
        held, or the answer ended first)."""
        if accepted or rejected:
            self.first_seen += 1
            self.first_ok += 1 if accepted else 0
        if accepted:
            self.next_ok += accepted - 1
            self.next_seen += accepted - 1 + (1 if rejected else 0)


def plan_drafts(
    alphas: list[tuple[float, float]],
    limits: list[int],
    costs: StepCosts,
    drafting: float = 0.0,
) -> list[int]:
    """Draft tokens for each of a step's decoding sequences (all of them in `alphas`, each
    `Acceptance.alpha`, with the most each may take in `limits`), so that the step's expected
    tokens per second are highest. `drafting`: seconds one draft token costs to make (a draft
    model's step; n-gram lookups cost next to nothing)."""
    if len(alphas) == 1:
        return [_alone(alphas[0], limits[0], costs, drafting)]
    a, b = costs.line()
    tokens = float(len(alphas))  # each decoding sequence yields one token anyway
    seconds = a + b * len(alphas)
    b += drafting  # what one draft token adds to the step
    chosen = [0] * len(alphas)
    # With two or more sequences every step is on the line already: each draft token adds b,
    # so they are added best first while the next one raises tokens per second, which is
    # when its expected gain first * then^(j-1) is above b * tokens / seconds.
    heap = [(-first, i) for i, (first, _) in enumerate(alphas) if limits[i] > 0 and first > 0]
    heapq.heapify(heap)
    while heap:
        neg_gain, i = heapq.heappop(heap)
        gain = -neg_gain
        if gain * seconds <= b * tokens:
            break  # the best remaining draft token would lower the step's throughput
        chosen[i] += 1
        tokens += gain
        seconds += b
        if chosen[i] < limits[i]:
            heapq.heappush(heap, (-(gain * alphas[i][1]), i))
    return chosen


def _alone(alpha: tuple[float, float], limit: int, costs: StepCosts, drafting: float) -> int:
    """One sequence: its first draft token moves the step off the one-token path, which may
    only pay back with several, so every k is weighed whole."""
    first, then = alpha
    best_k, best = 0, 1.0 / costs.time(1)
    gain = expected = 0.0
    for k in range(1, limit + 1):
        gain = first if k == 1 else gain * then
        expected += gain
        rate = (1.0 + expected) / (costs.time(1 + k) + drafting * k)
        if rate > best:
            best_k, best = k, rate
    return best_k


def probe_costs(backend: Backend, token: int) -> StepCosts | None:
    """Time a step of 1, 2 and 9 tokens (all with logits) in slot 0, best of three, for the
    cost model's start; None if the model cannot drop cells from a sequence's end (recurrent
    models), which verification needs."""
    timings: dict[int, list[float]] = {1: [], 2: [], 9: []}
    for n in (1, 2, 9) * 4:  # the first round warms up
        entries = [(token, pos, 0, True) for pos in range(n)]
        started = time.perf_counter()
        status = backend.decode(entries)
        took = time.perf_counter() - started
        if status != 0:
            return None
        if n == 9 and not backend.seq_rm(0, 5, -1):
            backend.seq_rm(0, -1, -1)
            return None
        backend.seq_rm(0, -1, -1)
        timings[n].append(took)
    t1, t2, t9 = (min(timings[n][1:]) for n in (1, 2, 9))
    b = max((t9 - t2) / 7, 0.0)
    return StepCosts(max(t2 - 2 * b, 1e-6), b, t1)
