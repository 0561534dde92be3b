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
   seed: one uniform number per token, so a seed gives the same tokens again.

The cuts keep ties: `top_k` keeps every token as likely as the k-th, `top_p` the most likely
tokens until they hold `p` of the mass plus any as likely as the last one, `min_p` every token
at least `min_p` times as likely as the most likely one.

Why not llama.cpp's chain: it copies the whole vocabulary into a candidate array for every
token and sorts it for `top_p`, on one thread (~5 ms per token for SmolLM2's 49k tokens, more
for Gemma-3's 262k). Here the penalties touch only the tokens in the history, `top_k` and
`min_p` are thresholds, `top_p` sorts only a candidate set grown until it holds `p` of the mass,
and the mass itself, and a draw without a cut, need the exps of only the tokens within e^-20 of
the top one unless a draw lands in the sliver the rest could hold (`Whole`; the cuts find their
candidates among those tokens, not in the whole row again: every pass over a row the step has
just pushed out of the caches costs, ~0.1 ms on Gemma-3's 1 MB); draws search
block sums, not a cumulative sum of the vocabulary (docs/benchmarks.md, "Sampling without
llama.cpp's chain"). Weights over the vocabulary are float32 exps summed in float64, so a
`top_p` boundary is placed to ~1e-7 of the mass; everything past that is exact.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

from llmd.engine.messages import SamplingParams

Row = npt.NDArray[np.float32]
Ids = npt.NDArray[np.intp]
Floats = npt.NDArray[np.float64]

BLOCK = 256
"""Tokens per block for the block sums, and per group for the group maxima, that spare
passes over the whole row."""
FIRST_CANDIDATES = 64
"""How many tokens `top_p` first sorts; the set grows 4x until it holds `p` of the mass."""
TAIL = 20.0
"""Tokens whose scaled logit is more than this under the top one weigh under e^-20 each
(`Whole`)."""
HEAD_SHARE = 0.3
"""A head holding more than this share of the vocabulary is taken as the whole row: listing
and gathering it would cost more than computing the few tokens more (on text sampled at
temperature 1, SmolLM2's head held 86% of its row at the median; Gemma-3's 1% at the median
and 12% at the 9th decile, so its heads are still listed)."""
SHIFT_FREE = (-60.0, 80.0)
"""Scaled top logits between which exp(scale * logit) itself, unshifted, neither overflows
float32 (e^88) nor loses the head's tokens (within e^-TAIL of the top) under its smallest
normal numbers (e^-87)."""
_MIN_P_SLACK = 1e-3
"""Logit margin under the `min_p` threshold for the first, float32 cut (the exact cut is in
float64 on the few tokens it keeps)."""


class Workspace:
    """Scratch rows for one model's samplers. The engine thread samples one row at a time, so
    its sequences share them instead of each holding a vocabulary's worth of memory."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.adjusted: Row = np.empty(n_vocab, np.float32)
        """The row with logit bias and penalties applied (the logits row itself stays as is)."""
        self.weights: Row = np.empty(n_vocab, np.float32)
        """exp((logit - max) / temperature) of the tail tokens (`Whole.tail`), when a draw or
        a `top_p` cut needs them."""
        self.head_weights: Row = np.empty(n_vocab, np.float32)
        """The same of every token, when the head is the whole row (`HEAD_SHARE`)."""
        self.every_id: Ids = np.arange(n_vocab)


class Cut:
    """A distribution over a few tokens (what the cuts kept): `weights` of `ids`, unnormalised,
    in decreasing likelihood."""

    def __init__(self, ids: Ids, weights: Floats) -> None:
        self.ids = ids
        self.weights = weights
        self.cumulative = np.cumsum(weights)

    def draw(self, u: float) -> int:
        """The token where `u` in [0, 1) falls in the cumulative weights."""
        return int(self.ids[_find(self.cumulative, u * float(self.cumulative[-1]))])

    def probabilities(self) -> tuple[Ids, Floats]:
        return self.ids, self.weights / self.cumulative[-1]


class Whole:
    """The whole vocabulary's distribution (no cut), computed where draws land: the `head`,
    every token within TAIL of the top (scaled logits), holds all but a sliver of the mass;
    the tail's weights are computed only when a draw, or a `top_p` cut, needs to know that
    sliver exactly (on SmolLM2's and Gemma-3's rows in bench/sampling.py, at temperatures 1
    and 0.7, the head held 0.1-44% of the vocabulary and the sliver could hold at most 4e-4
    of the mass, so the exp over the rest is spared on all but ~1 token in 2,500). Text
    sampled at temperature 1 is less sure of itself than those rows: SmolLM2's head then held
    86% of its vocabulary at the median, and a head over HEAD_SHARE of it is the whole row.

    A draw `u` below `lower / upper` (the head's share if the tail were as heavy as it can
    be) picks in the head at `u / share`; above it, the exact share decides, and the part
    of `u` past the bound picks in the head or the tail: exactly the softmax either way."""

    def __init__(self, logits: Row, top: float, scale: float, workspace: Workspace) -> None:
        self.logits, self.top, self.scale, self.workspace = logits, top, scale, workspace
        self.unit = 1.0
        """What one unit of `weights` weighs on the scale where the top token weighs 1."""
        # `head`, the head's logits: the cuts look for their candidates there, not in the
        # whole row (every candidate a `top_p` or `min_p` cut can keep is in the head).
        threshold = np.float32(top - TAIL / scale)
        # Every 8th token says whether the head is most of the row (cold after a step, each
        # pass over the row costs: the full compare and count ~45 us on SmolLM2, this ~15).
        every_8th = logits[::8]
        if np.count_nonzero(every_8th >= threshold) > HEAD_SHARE * len(every_8th):
            # Most of the row: every token is the head, and there is no tail. Spares the ids,
            # the gather, and a pass over each (at temperature 1 on SmolLM2's own sampled
            # text, 403 against 493 us a token after the step; docs/benchmarks.md).
            self.ids: Ids = workspace.every_id
            self.head: Row = logits
            weights = workspace.head_weights
            if SHIFT_FREE[0] < top * scale < SHIFT_FREE[1]:
                # exp(scale * logit) without the shift to the top: no pass for it.
                self.unit = math.exp(-top * scale)
                source = logits
            else:
                source = np.subtract(logits, np.float32(top), out=weights)
        else:
            self.ids = np.flatnonzero(logits >= threshold)
            self.head = logits[self.ids]
            weights = source = np.subtract(self.head, np.float32(top))
        if scale != 1.0:
            source = np.multiply(source, np.float32(scale), out=weights)
        self.weights: Row = np.exp(source, out=weights)
        self.blocks = np.cumsum(block_sums(weights))
        self.lower = float(self.blocks[-1]) * self.unit
        """The head's mass: the whole is at least this ..."""
        # ... and at most this: every tail token weighs under e^-TAIL (with room for
        # float32 rounding at the threshold).
        self.upper = self.lower + (len(logits) - len(self.ids)) * math.exp(-TAIL) * 1.001
        self._tail: Floats | None = None

    def tail(self) -> Floats:
        """The tail's cumulative block sums (its weights in the workspace's row, the head's
        set to 0): one exp over the vocabulary, once."""
        if self._tail is None:
            weights = self.workspace.weights
            np.subtract(self.logits, np.float32(self.top), out=weights)
            if self.scale != 1.0:
                np.multiply(weights, np.float32(self.scale), out=weights)
            np.exp(weights, out=weights)
            weights[self.ids] = 0.0
            self._tail = np.cumsum(block_sums(weights))
        return self._tail

    def mass(self) -> float:
        """The exact mass of the whole vocabulary."""
        return self.lower + float(self.tail()[-1])

    def draw(self, u: float) -> int:
        bound = self.lower / self.upper
        if u < bound:
            return self._head(u / bound)
        share = self.lower / self.mass()
        if u < share:
            return self._head((u - bound) / (share - bound))
        tail = self.tail()
        return _in_blocks(self.workspace.weights, tail, (u - share) / (1.0 - share))

    def _head(self, u: float) -> int:
        return int(self.ids[_in_blocks(self.weights, self.blocks, u)])

    def probabilities(self) -> tuple[Ids, Floats]:
        self.tail()
        everything = self.workspace.weights.astype(np.float64)
        everything[self.ids] = self.weights * self.unit
        return np.arange(len(everything)), everything / everything.sum()


Distribution = Cut | Whole


def _in_blocks(weights: Row, blocks: Floats, u: float) -> int:
    """The index where `u` in [0, 1) falls in `weights`, found through their cumulative block
    sums `blocks` (only one block's weights are summed one by one)."""
    target = u * float(blocks[-1])
    block = _find(blocks, target)
    start = block * BLOCK
    local = target - (float(blocks[block - 1]) if block else 0.0)
    return start + _find(np.cumsum(weights[start : start + BLOCK], dtype=np.float64), local)


def _find(cumulative: Floats, target: float) -> int:
    """The first index whose cumulative weight exceeds `target`; if rounding puts `target` at
    or past the end, the last index with weight (a token of weight 0 is never chosen)."""
    i = int(np.searchsorted(cumulative, target, side="right"))
    if i < len(cumulative):
        return i
    return int(np.searchsorted(cumulative, cumulative[-1], side="left"))


def block_sums(weights: Row) -> Floats:
    """Sums of `weights` per BLOCK tokens (the last block may be shorter), in float64."""
    whole = len(weights) // BLOCK * BLOCK
    sums: Floats = weights[:whole].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)
    if whole < len(weights):
        sums = np.concatenate((sums, [weights[whole:].sum(dtype=np.float64)]))
    return sums


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
        which takes one number from the generator."""
        if self.greedy:
            return int(logits.argmax())
        return self.distribution(logits).draw(float(self.rng.random()))

    def draw(self, distribution: Distribution) -> int:
        """Another draw from `distribution` (under a grammar, when one was refused)."""
        return distribution.draw(float(self.rng.random()))

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
        """What the next token is drawn from, for `logits` (adjusted; temperature > 0)."""
        n = len(logits)
        scale = 1.0 / self.temperature
        k = self.top_k if 0 < self.top_k < n else 0
        if not k and self.top_p >= 1.0 and self.min_p <= 0.0:
            return Whole(logits, float(logits.max()), scale, self.workspace)  # no cut
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
            if floor >= whole.top - TAIL / whole.scale:
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
