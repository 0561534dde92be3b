"""How many draft tokens each sequence puts into a step: a choice from measured step costs and
each sequence's recent acceptance, so that speculation is used where it pays and not elsewhere.

A step's time grows with its tokens: T(n) = a + b*n. On a CPU `a` (reading every weight once,
the threads' start) is the larger part: one decode token ~20 ms, a step of 2 ~21-27 ms, each
further token ~6-8 ms (SmolLM2 on the 2-core box, docs/speculative.md). A sequence whose
drafts are accepted with probability `alpha` each gains alpha^j tokens from its j-th draft
token (it counts only if the j-1 before it were accepted), which costs `b`. The step's
throughput N/T (expected tokens over time) rises with that draft token exactly when
alpha^j > b*N/T. With 16 streams the step is already long and drafting stops unless nearly
every draft is accepted.

`a` is paid once per micro-batch, and with one KV stream per slot llama.cpp cuts a step into
several wherever neighbouring slots bring different numbers of tokens (`micro_batches`): one
stream of 16 drafting alone pays a second pass over the weights. So with two or more streams
whole plans are compared (none, the best-first tokens on `b` alone, one depth for all that
draft), each priced by the micro-batches it makes.

`a` and `b` are fitted to the steps this engine actually runs (decay-weighted least squares
over steps that read no prompt, on their micro-batches and tokens), with a probe of steps of
1, 2 and 9 tokens at load as a lasting prior in units of a one-token step's time.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from llmd.engine.backend import Backend

# Weight of a measured step in the fit decays by this factor per later step of two or more
# tokens (~200 steps' memory), and by IDLE_DECAY per later step of one token (half in ~700:
# a stream that stopped drafting comes back to the probe's line).
COST_DECAY = 0.995
IDLE_DECAY = 0.999
# The probe's steps of 2 and 9 tokens count as this many measured steps each, for good.
PROBE_WEIGHT = 2.0
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
    """What a step takes: T(1) apart, and for a step of two or more tokens `a` per micro-batch
    plus `b` per token, both fitted to measured steps.

    A step of one token runs on llama.cpp's decode threads and any larger one on its prompt
    threads; what the switch costs depends on the box and its OpenMP waits (bench/spec_steps.py,
    SmolLM2 on 2 cores: 20 ms for one token, 47 for two with threads that sleep at once, 21-27
    with `engine.omp_spin_count`), so a line through one-token steps could make a single
    stream's first draft token look cheaper than it is.

    Micro-batches: with one KV stream per slot llama.cpp cuts a step into runs of consecutive
    slots, each slot giving as many tokens as the one in its run with the fewest
    (`micro_batches`), and every micro-batch reads every weight again. A step where one of 16
    streams drafts 8 tokens is two passes, not one pass with 8 more tokens.

    The probe at load ran at position 0 on a quiet box; later, every step costs more (the
    context has grown, the box is busier), and one stream measures its larger steps only when
    it drafts. So the probe's points are kept as multiples of T(1) and priced in T(1) as
    one-token steps keep measuring it, and they weigh PROBE_WEIGHT steps for good; measured
    steps count in seconds and fade with every later step (faster with later larger ones),
    so until a stream has measured its own larger steps, and again a while after it stopped
    drafting, its line is the probe's shape at today's T(1). (SmolLM2 ~300 tokens into a
    sampled answer: a step of 2 took 1.24-1.31 T(1) where the line had said 1.13-1.19, the
    probe's seconds weighing four steps each and fading only as larger steps came, ~1 in 20
    steps there; docs/benchmarks.md. Fitting measured steps in units of T(1) too had them
    divided by a T(1) that lagged behind the grown context: after a 690-token prompt, a code
    edit's steps of 17 were priced at 149-177 ms against 103-149 before, and its answer took
    235-242 steps against 126-130.)"""

    def __init__(
        self, a: float, b: float, single: float | None = None, n_ubatch: int = 1 << 30
    ) -> None:
        self.n_ubatch = n_ubatch
        """llama.cpp's micro-batch size: a step of more rows is cut into more passes."""
        self._single = single if single is not None else a + b
        # Sums of the weighted regression of T on (U micro-batches, N tokens), no intercept
        # (with U = 1 throughout it is the line a + b*N): the probe's, with T in units of
        # T(1), and the measured steps', in seconds.
        self._probe = [0.0] * 5
        for n in (2, 9):
            _add(self._probe, 1, n, (a + b * n) / self._single, PROBE_WEIGHT)
        self._seen = [0.0] * 5
        self._line = self._fit()
        """(a, b) in seconds, refitted once per observed step (plans price many steps
        between)."""

    def observe(self, n: int, seconds: float, ubatches: int = 1) -> None:
        if n > FIT_MAX_TOKENS:
            return
        if n == 1:
            self._single = self._single * 0.95 + seconds * 0.05
            decay = IDLE_DECAY
        else:
            decay = COST_DECAY
        self._seen = [x * decay for x in self._seen]
        if n > 1:
            _add(self._seen, ubatches, n, seconds, 1.0)
        self._line = self._fit()

    def micro_batches(self, steps: list[tuple[int, int]]) -> list[int]:
        """`micro_batches` at this model's micro-batch size."""
        return micro_batches(steps, self.n_ubatch)

    def line(self) -> tuple[float, float]:
        """(a, b): cost per micro-batch and per token of a step of two or more tokens."""
        return self._line

    def _fit(self) -> tuple[float, float]:
        t1 = self._single
        uu, un, nn, uy, ny = (
            p * (t1 if i >= 3 else 1.0) + s  # the probe's T (sums 3, 4) in today's T(1)
            for i, (p, s) in enumerate(zip(self._probe, self._seen, strict=True))
        )
        det = uu * nn - un * un
        b = (uu * ny - un * uy) / det if det > 0 else 0.0
        b = max(b, 0.0)
        a = max((uy - b * un) / uu, 1e-6)
        return a, b

    def time(self, n: int, ubatches: int = 1) -> float:
        if n == 1:
            return self._single
        a, b = self._line
        return a * ubatches + b * n


def _add(sums: list[float], u: int, n: int, y: float, w: float) -> None:
    """One weighted point (U, N) -> y into the regression's sums [UU, UN, NN, UY, NY]."""
    for i, x in enumerate((u * u, u * n, n * n, u * y, n * y)):
        sums[i] += w * x


def micro_batches(steps: list[tuple[int, int]], n_ubatch: int = 1 << 30) -> list[int]:
    """The tokens of each micro-batch llama.cpp cuts a step into (`split_equal`)."""
    return [sum(rows for _, rows in cut) for cut in split_equal(steps, n_ubatch)]


def split_equal(steps: list[tuple[int, int]], n_ubatch: int) -> list[list[tuple[int, int]]]:
    """The micro-batches llama.cpp cuts a step into, each as its (slot, rows), from each
    sequence's (slot, rows) in slot order. With one KV stream per slot it splits "equally"
    and in sequence order (llama-batch.cpp, `split_equal`): a micro-batch is the run of
    consecutive slots that still have rows, from the first, each giving as many as the one
    with the fewest, at most `n_ubatch` rows in all."""
    left = [rows for _, rows in steps]
    cuts: list[list[tuple[int, int]]] = []
    i, n = 0, len(steps)
    while True:
        while i < n and not left[i]:
            i += 1
        if i == n:
            return cuts
        j = i + 1
        while j < n and left[j] and steps[j][0] == steps[j - 1][0] + 1:
            j += 1
        take = min(min(left[i:j]), max(1, n_ubatch // (j - i)))
        cuts.append([(steps[x][0], take) for x in range(i, j)])
        for x in range(i, j):
            left[x] -= take


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
    slots: list[int] | None = None,
) -> list[int]:
    """Draft tokens for each of a step's decoding sequences (all of them in `alphas`, each
    `Acceptance.alpha`, with the most each may take in `limits`, in `slots`: consecutive if
    not given), so that the step's expected tokens per second are highest. `drafting`: seconds
    one draft token costs to make (a draft model's step; n-gram lookups cost next to nothing).

    Two or more sequences: a draft token costs `b` within a micro-batch, but drafts that leave
    their neighbours behind cost another micro-batch (`micro_batches`). So a few whole plans
    are weighed: none; each draft token added best first while it clears the bar on `b`
    alone; and every drafting sequence (or only the likelier ones) to the same depth, which
    keeps a run of slots in one micro-batch."""
    if len(alphas) == 1:
        return [_alone(alphas[0], limits[0], costs, drafting)]
    order = slots if slots is not None else list(range(len(alphas)))
    by_slot = sorted(range(len(alphas)), key=lambda i: order[i])
    gains = [_gains(alpha, limit) for alpha, limit in zip(alphas, limits, strict=True)]
    _, b = costs.line()

    def seconds(ks: list[int]) -> float:
        sizes = costs.micro_batches([(order[i], 1 + ks[i]) for i in by_slot])
        return costs.time(sum(sizes), len(sizes)) + drafting * sum(ks)

    def rate(ks: list[int]) -> float:
        return (len(ks) + sum(g[k] for g, k in zip(gains, ks, strict=True))) / seconds(ks)

    none = [0] * len(alphas)
    base = seconds(none)
    marginal = _marginal(alphas, limits, base, b, drafting)
    if not any(marginal):
        return marginal  # no draft token pays even at `b`: no plan with more cuts can
    plans = {tuple(marginal)}
    deepest = max(limits)
    firsts = sorted(first for (first, _), limit in zip(alphas, limits, strict=True) if limit)
    cutoffs = {firsts[0], firsts[len(firsts) // 2], firsts[-1]}
    # One depth for every sequence that could draft, for the likelier half, for the likeliest.
    for depth in {1, 2, 4, 8, *limits}:
        if 0 < depth <= deepest:
            for cutoff in cutoffs:
                plans.add(
                    tuple(
                        min(depth, limit) if first >= cutoff else 0
                        for (first, _), limit in zip(alphas, limits, strict=True)
                    )
                )
    best, best_rate = none, len(alphas) / base
    for plan in sorted(plans):  # sorted: the same inputs always give the same plan
        r = rate(list(plan))
        if r > best_rate * (1 + 1e-9):
            best, best_rate = list(plan), r
    return best


def _gains(alpha: tuple[float, float], limit: int) -> list[float]:
    """Expected tokens from drafts of 0 .. limit tokens (the j-th holds if all before it did)."""
    first, then = alpha
    out, gain, total = [0.0], first, 0.0
    for _ in range(limit):
        total += gain
        out.append(total)
        gain *= then
    return out


def _marginal(
    alphas: list[tuple[float, float]], limits: list[int], seconds: float, b: float, drafting: float
) -> list[int]:
    """Draft tokens added best first across the sequences, from a step of `seconds` without
    drafts, while the next one raises tokens per second if it cost only `b` (no new
    micro-batch) and its making: its expected gain first * then^(j-1) is above b * tokens /
    seconds."""
    tokens = float(len(alphas))  # each decoding sequence yields one token anyway
    b += drafting
    chosen = [0] * len(alphas)
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
    return StepCosts(max(t2 - 2 * b, 1e-6), b, t1, backend.ubatch_size)
