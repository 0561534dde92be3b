"""Choosing the next token from a row of logits, as OpenAI's sampling parameters mean it, fast.

A `TokenSampler` belongs to one sequence: made from its `SamplingParams` and seed, it turns a
float32 logits row (a view of llama.cpp's output, never written to) into a token, and keeps the
history its penalties need. In this order:

1. `logit_bias` is added;
2. penalties over the last `repeat_last_n` tokens this sampler returned, with llama.cpp's
   formulas: the repeat penalty divides a positive logit and multiplies a negative one, the
   frequency penalty subtracts count x f, the presence penalty f once;
3. temperature <= 0 is greedy (the first of equal maxima); otherwise the logits are divided
   by the temperature, then cut by `top_k`, `top_p` and `min_p`, in that order (as OpenAI,
   Hugging Face and vLLM apply them: temperature first. llama.cpp's chain, which llmd used
   before, cuts first and divides last, so a temperature changes what `top_p` keeps there);
4. one draw from what is left, with the sampler's own `numpy.random.Generator` seeded from the
   seed, so a seed gives the same tokens again (one uniform number per token after a cut,
   a few hundred per batch of proposals without one, `Envelope`).

The cuts keep ties: `top_k` keeps every token as likely as the k-th, `top_p` the most likely
tokens until they hold `p` of the mass plus any as likely as the last one, `min_p` every token
at least `min_p` times as likely as the most likely one.

Why not llama.cpp's chain: it copies the whole vocabulary into a candidate array for every
token and sorts it for `top_p`, on one thread (~5 ms per token for SmolLM2's 49k tokens, more
for Gemma-3's 262k). Here the penalties touch only the tokens in the history, `top_k` and
`min_p` are thresholds, `top_p` sorts only a candidate set grown until it holds `p` of the mass,
and the mass itself needs the exps of only the tokens within e^-20 of the top one unless a
draw lands in the sliver the rest could hold (`Whole`; the cuts find their
candidates among those tokens, not in the whole row again: every pass over a row the step has
just pushed out of the caches costs, ~0.1 ms on Gemma-3's 1 MB); draws search
block sums, not a cumulative sum of the vocabulary (docs/benchmarks.md, "Sampling without
llama.cpp's chain"). A draw without a cut needs no mass at all: it is drawn by rejection under
the maxima of 64-token columns (`Envelope`), one pass over the row and a few small arrays; a
`top_p` cut alone (the one cut OpenAI's API has) keeps such a draw when the tokens more likely
than it hold under `p` of the mass, else draws again (`Nucleus`), and needs the whole mass
only for a draw near the cut's edge.
Weights over the vocabulary are float32 exps summed in float64, so a `top_p` boundary is
placed to ~1e-7 of the mass; everything past that is exact.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from llmd.engine.distributions import (
    BLOCK,
    NUCLEUS_FROM,
    Cut,
    Distribution,
    Envelope,
    Floats,
    Ids,
    Nucleus,
    Row,
    Whole,
    Workspace,
)
from llmd.engine.messages import SamplingParams

FIRST_CANDIDATES = 64
"""How many tokens `top_p` first sorts; the set grows 4x until it holds `p` of the mass."""
_MIN_P_SLACK = 1e-3
"""Logit margin under the `min_p` threshold for the first, float32 cut (the exact cut is in
float64 on the few tokens it keeps)."""


def group_maxima(logits: Row) -> Row:
    """The largest logit of each group of tokens, BLOCK tokens a group (any grouping serves
    `at_least`; tokens i, i + g, i + 2g ... reduce fastest, row against row)."""
    whole = len(logits) // BLOCK * BLOCK
    maxima: Row = logits[:whole].reshape(BLOCK, -1).max(axis=0)
    if whole < len(logits):
        maxima = np.concatenate((maxima, [logits[whole:].max()]))
    return maxima


def at_least(logits: Row, m: int, maxima: Row) -> Ids:
    """Ids of every token whose logit is at least some threshold, chosen so that there are
    at least `m` of them (and usually not many more): the m-th largest of the group maxima
    (`maxima`) while there are enough groups, else the m-th largest logit. Ties at the
    threshold are all in, so the set is always a prefix of the tokens by likelihood."""
    n = len(logits)
    if m >= n:
        return np.arange(n)
    if m <= len(maxima):
        threshold = np.partition(maxima, len(maxima) - m)[len(maxima) - m]
    else:
        threshold = np.partition(logits, n - m)[n - m]
    return np.flatnonzero(logits >= threshold)


class TokenSampler:
    """One sequence's sampler (see the module docstring for what it does, in which order)."""

    def __init__(self, params: SamplingParams, seed: int, workspace: Workspace) -> None:
        self.temperature = params.temperature
        self.top_k = params.top_k
        self.top_p = params.top_p
        self.min_p = params.min_p
        self.rng = np.random.default_rng(seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.workspace = workspace
        n = workspace.n_vocab
        known = {t: b for t, b in params.logit_bias.items() if 0 <= t < n}
        self._bias_ids: Ids = np.fromiter(known.keys(), np.intp, len(known))
        self._bias: Row = np.fromiter(known.values(), np.float32, len(known))
        self.repeat = np.float32(params.repeat_penalty)
        self.frequency = np.float32(params.frequency_penalty)
        self.presence = np.float32(params.presence_penalty)
        penalized = self.repeat != 1 or self.frequency != 0 or self.presence != 0
        self.last_n = max(params.repeat_last_n, 0) if penalized else 0
        self.history: deque[int] = deque()
        self.counts: dict[int, int] = {}

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def sample(self, row: Row) -> int:
        """Choose a token from `row` and record it."""
        token = self.choose(self.logits(row))
        self.accept(token)
        return token

    def logits(self, row: Row) -> Row:
        """`row` with the logit bias and the penalties applied: `row` itself when neither
        changes anything, else the workspace's copy (valid until the next call)."""
        if not len(self._bias) and not self.counts:
            return row
        out = self.workspace.adjusted
        np.copyto(out, row)
        if len(self._bias):
            out[self._bias_ids] += self._bias
        if self.counts:
            ids = np.fromiter(self.counts.keys(), np.intp, len(self.counts))
            counts = np.fromiter(self.counts.values(), np.float32, len(self.counts))
            values = out[ids]
            # float32 throughout, as llama.cpp's penalties sampler computes them.
            values = np.where(values <= 0, values * self.repeat, values / self.repeat)
            values -= counts * self.frequency + self.presence
            out[ids] = values
        return out

    def choose(self, logits: Row) -> int:
        """The token for `logits` (already adjusted): the argmax when greedy, else one draw,
        which takes numbers from the generator."""
        if self.greedy:
            return int(logits.argmax())
        return self.distribution(logits).draw(self.rng)

    def draw(self, distribution: Distribution) -> int:
        """Another draw from `distribution` (under a grammar, when one was refused)."""
        return distribution.draw(self.rng)

    def accept(self, token: int) -> None:
        """Record the token the sequence goes on with, for the penalties."""
        if not self.last_n:
            return
        self.history.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        if len(self.history) > self.last_n:
            old = self.history.popleft()
            left = self.counts[old] - 1
            if left:
                self.counts[old] = left
            else:
                del self.counts[old]

    def distribution(self, logits: Row) -> Distribution:
        """What the next token is drawn from, for `logits` (adjusted; temperature > 0): the
        whole softmax by rejection without a cut, a `top_p` cut alone by rejection from it
        (from NUCLEUS_FROM), else the cut's tokens and weights."""
        scale = 1.0 / self.temperature
        if not 0 < self.top_k < len(logits) and self.min_p <= 0.0:
            if self.top_p >= 1.0:
                return Envelope(logits, scale, self.workspace)
            if self.top_p >= NUCLEUS_FROM:
                return Nucleus(logits, scale, self.top_p, self.workspace, lambda: self.cut(logits))
        return self.cut(logits)

    def cut(self, logits: Row) -> Cut:
        """The tokens the cuts keep and their weights, for `logits` (adjusted; temperature > 0
        and at least one cut)."""
        n = len(logits)
        scale = 1.0 / self.temperature
        k = self.top_k if 0 < self.top_k < n else 0
        whole = None
        # A candidate set that holds every token the cuts can keep: a prefix of the tokens
        # by likelihood (every token at least as likely as its least likely one).
        if k:
            maxima = group_maxima(logits)
            top = float(maxima.max())
            ids = at_least(logits, k, maxima)
            if len(ids) > k:  # from group maxima: cut to the top k, ties kept
                kth = np.partition(logits[ids], len(ids) - k)[len(ids) - k]
                ids = ids[logits[ids] >= kth]
        else:
            top = float(logits.max())
            floor = None  # no token under the min_p threshold can be kept
            if self.min_p > 0.0:
                floor = top + self.temperature * math.log(self.min_p) - _MIN_P_SLACK
            if floor is not None and self.top_p >= 1.0:  # min_p alone
                ids = np.flatnonzero(logits >= np.float32(floor))
            else:
                # top_p needs the mass, so the head (`Whole`), a prefix of the tokens by
                # likelihood; the candidates are found in it, not in the whole row again
                # (bench/sampling.py --after-decode: each pass over Gemma-3's 1 MB row costs
                # ~0.1 ms when the step has just cleared the caches).
                whole = Whole(logits, top, scale, self.workspace)
                ids = self._top_p_candidates(whole, floor)
        chosen = logits[ids]
        order = np.argsort(-chosen)  # ties are kept or cut together: any order
        ids, chosen = ids[order], chosen[order]
        probs = np.exp((chosen.astype(np.float64) - top) * scale)
        if self.top_p < 1.0:
            cumulative = np.cumsum(probs)
            if whole is None:  # top_k: p of the top k's mass
                last = _first_reaching(cumulative, self.top_p * float(cumulative[-1]))
            else:  # p of the whole mass, known exactly only if the bounds disagree
                last = _first_reaching(cumulative, self.top_p * whole.lower)
                if last != _first_reaching(cumulative, self.top_p * whole.upper):
                    last = _first_reaching(cumulative, self.top_p * whole.mass())
            if last < len(ids):  # keep ties with the last token kept
                keep = int(np.searchsorted(-chosen, -chosen[last], side="right"))
                ids, chosen, probs = ids[:keep], chosen[:keep], probs[:keep]
        if self.min_p > 0.0:
            keep = int(np.count_nonzero(probs >= self.min_p))
            ids, probs = ids[:keep], probs[:keep]
        return Cut(ids, probs)

    def _top_p_candidates(self, whole: Whole, floor: float | None) -> Ids:
        """Ids of a prefix of the tokens by likelihood that holds every token a `top_p` cut
        (and a `min_p` cut at `floor`) can keep, found in `whole`'s head. With `min_p`: every
        token above its threshold (in the whole row if that lies under the head). Else a set
        grown until it holds `top_p` of the mass: at most `whole.upper - whole.lower` of the
        mass lies outside the head, so below p = 1 - that the head always holds enough (else
        the whole row is searched)."""
        head = whole.head
        if floor is not None:
            if floor >= whole.threshold:
                return whole.ids[head >= np.float32(floor)]
            return np.flatnonzero(whole.logits >= np.float32(floor))  # min_p below e^-TAIL
        maxima, m = group_maxima(head), FIRST_CANDIDATES
        while True:
            chosen = at_least(head, m, maxima)
            # The float32 weights, with room for their rounding against the float64 exps
            # the cut is then placed with.
            held = float(whole.weights[chosen].sum(dtype=np.float64)) * whole.unit
            if held >= self.top_p * whole.upper * (1 + 1e-6):
                return whole.ids[chosen]
            if len(chosen) == len(head):
                break
            m *= 4
        logits, maxima, n = whole.logits, group_maxima(whole.logits), len(whole.logits)
        while True:  # p so near 1 that some of the tail may be needed
            ids = at_least(logits, m, maxima)
            held = np.exp((logits[ids].astype(np.float64) - whole.top) * whole.scale).sum()
            if len(ids) == n or held >= self.top_p * whole.upper:
                return ids
            m *= 4


def _first_reaching(cumulative: Floats, target: float) -> int:
    """The first index whose cumulative mass reaches `target` (len: none does)."""
    return int(np.searchsorted(cumulative, target, side="left"))
