"""What a token is drawn from: the distributions `TokenSampler` (llmd/engine/sampler.py) makes
from a row of logits, and the scratch rows they share.

`Cut` is what a `top_k`, `top_p` or `min_p` cut kept: a few tokens and their weights. `Whole`
is the softmax of the whole vocabulary, computed where draws land (its head); the cuts find
their candidates in it. `Envelope` is the same softmax for a draw without a cut, drawn by
rejection under the maxima of columns of the row, which needs no mass at all; `Nucleus` is a
`top_p` cut drawn from it, keeping only the draws inside the cut. Every
`draw(rng)` takes what uniform numbers it needs from the sequence's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Row = npt.NDArray[np.float32]
Ids = npt.NDArray[np.intp]
Floats = npt.NDArray[np.float64]

BLOCK = 256
"""Tokens per block for the block sums, and per group for the group maxima, that spare
passes over the whole row."""
TAIL = 20.0
"""Tokens whose scaled logit is more than this under the top one weigh under e^-20 each
(`Whole`)."""
HEAD_SHARE = 0.3
"""A head holding more than this share of the vocabulary is taken as the whole row: listing
and gathering it would cost more than computing the few tokens more (on text sampled at
temperature 1, SmolLM2's head held 86% of its row at the median; Gemma-3's 1% at the median
and 12% at the 9th decile on one text, ~72k tokens, 27%, on another, so its heads are still
listed). Only cuts use `Whole` now: a draw without one is `Envelope`'s."""
SHIFT_FREE = (-60.0, 80.0)
"""Scaled top logits between which exp(scale * logit) itself, unshifted, neither overflows
float32 (e^88) nor loses the head's tokens (within e^-TAIL of the top) under its smallest
normal numbers (e^-87)."""
COLUMN = 64
"""Tokens per column of `Envelope`: the row read as COLUMN rows of n / COLUMN columns, so the
column maxima are one elementwise max of rows. Fewer tokens a column make a tighter envelope
but more columns to exp and sum: on text sampled at temperature 1, right after the step, a
proposal was accepted about one time in 45 with 64 and in 11 with 16, and 64 was as fast as
the fastest of 8, 16, 32, 64 and 128 on both models (SmolLM2 224 us, 32 level; Gemma-3 360,
128 level; 16 took 240 and 475)."""
PROPOSALS = 128
"""Proposals drawn and tested at once by `Envelope.draw` (numpy calls, not their length, are
what a draw costs right after a step)."""
ROUNDS = 8
"""Batches of proposals before `Envelope.draw` hands the draw to `Whole` (a row whose mass is
one token in a column of 64 accepts one proposal in ~64; a later round is rare)."""
NUCLEUS_FROM = 0.5
"""The least `top_p` drawn by rejection (`Nucleus`): a draw from the whole softmax is in the
nucleus at least p of the time, so at least one time in two from here."""
NUCLEUS_TRIES = 8
"""Draws from the whole softmax before `Nucleus.draw` hands the draw to the cut itself (at
p = 0.5 all eight miss one time in 256 at most; at 0.95 practically never)."""


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
        # `Envelope`'s layout: `full` rows of `columns` tokens, then `extra` tokens, one more
        # in each of the first `extra` columns.
        self.columns = -(-n_vocab // COLUMN)
        self.full = n_vocab // self.columns
        self.extra = n_vocab - self.full * self.columns
        self.sizes: Row = np.full(self.columns, self.full, np.float32)
        self.sizes[: self.extra] += 1
        self.maxima: Row = np.empty(self.columns, np.float32)
        self.column_weights: Row = np.empty(self.columns, np.float32)


class Cut:
    """A distribution over a few tokens (what the cuts kept): `weights` of `ids`, unnormalised,
    in decreasing likelihood."""

    def __init__(self, ids: Ids, weights: Floats) -> None:
        self.ids = ids
        self.weights = weights
        self.cumulative = np.cumsum(weights)

    def draw(self, rng: np.random.Generator) -> int:
        """The token where one uniform number falls in the cumulative weights."""
        u = float(rng.random())
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
        self.threshold = top - TAIL / scale
        """The head's least scaled-down logit: every token at or above it is in the head."""
        threshold = np.float32(self.threshold)
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
            weights = row_weights(self.logits, self.top, self.scale, self.workspace.weights)
            weights[self.ids] = 0.0
            self._tail = np.cumsum(block_sums(weights))
        return self._tail

    def mass(self) -> float:
        """The exact mass of the whole vocabulary."""
        return self.lower + float(self.tail()[-1])

    def draw(self, rng: np.random.Generator) -> int:
        """The token where one uniform number falls in the softmax."""
        u = float(rng.random())
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


class Envelope:
    """The whole vocabulary's distribution (no cut), drawn by rejection: a column of the row
    (`Workspace`'s layout) is proposed with the weight its largest logit would have if every
    token in it had that logit, a token of the column uniformly, and the proposal is accepted
    with the token's weight over that largest one's, exp(scale * (logit - column max)) <= 1.
    An accepted token is the softmax's exactly (each proposal's chance of acceptance is its
    weight times one constant), however many proposals it took.

    Why: a draw needs no mass, so no exps of the row: one elementwise max of rows (the read
    of the row an argmax costs), the exps of the maxima, their running sum, and proposals in
    batches. On text sampled at temperature 1, right after the step, this took 326 against
    448 us a token on SmolLM2 and 391 against 1,042 on Gemma-3, whose heads within e^-20 of
    the top held ~72k tokens to list and exp (bench.sampling --after-decode --sampled-text;
    the exact column sums instead, from the exps of the whole row, took 350 and 1,069)."""

    def __init__(self, logits: Row, scale: float, workspace: Workspace) -> None:
        self.logits, self.scale, self.workspace = logits, scale, workspace
        columns, full, extra = workspace.columns, workspace.full, workspace.extra
        rows = logits[: full * columns].reshape(full, columns)
        maxima = np.max(rows, axis=0, out=workspace.maxima)
        if extra:
            np.maximum(maxima[:extra], logits[full * columns :], out=maxima[:extra])
        self.maxima = maxima
        # exp(scale * max) unshifted, as long as that neither overflows float32 nor puts the
        # top column near its smallest normal numbers; else shifted to the top (a pass more).
        self.shift = 0.0
        """What the column weights are exps of the distance to (scaled): 0 or the top logit."""
        self.cumulative = self._weights(0.0)
        self.total = float(self.cumulative[-1])
        if not math.exp(-60.0) < self.total < math.inf:
            self.shift = float(maxima.max())
            self.cumulative = self._weights(self.shift)
            self.total = float(self.cumulative[-1])

    def _weights(self, shift: float) -> Floats:
        """Cumulative weights of the columns: size x exp(scale * (max - shift))."""
        weights = self.workspace.column_weights
        source = self.maxima
        if shift:
            source = np.subtract(source, np.float32(shift), out=weights)
        if self.scale != 1.0:
            source = np.multiply(source, np.float32(self.scale), out=weights)
        with np.errstate(over="ignore"):  # unshifted: an overflow sends it back here shifted
            np.exp(source, out=weights)
        if self.workspace.extra:  # columns of two sizes (else the size is a common factor)
            weights *= self.workspace.sizes
        return np.cumsum(weights, dtype=np.float64)

    def draw(self, rng: np.random.Generator) -> int:
        workspace = self.workspace
        n = PROPOSALS
        for _ in range(ROUNDS):
            u = rng.random(3 * n)
            # `left`: the first column whose running sum reaches the point, never one past
            # the last (u < 1), and a column of weight 0 only for a point at exactly 0.
            columns = self.cumulative.searchsorted(u[:n] * self.total)
            sizes = workspace.sizes[columns] if workspace.extra else workspace.full
            tokens = (u[n : 2 * n] * sizes).astype(np.intp)
            tokens *= workspace.columns
            tokens += columns
            distance = self.logits[tokens] - self.maxima[columns]
            if self.scale != 1.0:
                distance *= np.float32(self.scale)
            accepted = u[2 * n :] < np.exp(distance)
            first = int(accepted.argmax())
            if accepted[first]:
                return int(tokens[first])
        # Rare: draw it from the softmax itself. Still exact: an accepted proposal is the
        # softmax's whatever the round, so the draw is whichever way it is made.
        return self.whole().draw(rng)

    def whole(self) -> Whole:
        return Whole(self.logits, float(self.maxima.max()), self.scale, self.workspace)

    def probabilities(self) -> tuple[Ids, Floats]:
        return self.whole().probabilities()


class Nucleus:
    """A `top_p` cut drawn by rejection: a draw from the whole softmax (`Envelope`) is kept
    when the tokens more likely than it hold under p of the mass, else drawn again. The cut
    keeps exactly those tokens (the most likely ones until they hold p, and any as likely as
    the last), and a draw from the whole kept only inside a set is that set's renormalised
    distribution exactly: the cut's, however many draws it took.

    Whether a draw is kept needs the mass above it and, unless that is clearly under or
    over p of the whole, the whole mass. Every token more likely than the draw lies in a
    column whose maximum is over it: those few columns are gathered and their exps taken
    exactly; every other column holds only tokens at most as likely as the draw, and its
    mass lies between its maximum's weight and its envelope weight (at most 65 tokens of it).
    Only a draw near the cut's edge, or out of the nucleus with a heavy rest, needs the exps
    of the whole row. Why: an exact `top_p` by `Cut` exps the head and sorts a candidate set
    grown to hold p, ~30 numpy calls: right after the step, on sampled text, 550 us a token
    on SmolLM2 and 1,050 on Gemma-3, against 330 and 448 this way (bench.sampling
    --after-decode --sampled-text; llama.cpp's chain at its defaults, cut to 40 tokens
    first, 100 and 494)."""

    def __init__(
        self, logits: Row, scale: float, top_p: float, workspace: Workspace, cut: Callable[[], Cut]
    ) -> None:
        self.logits, self.scale, self.top_p, self.workspace = logits, scale, top_p, workspace
        self.envelope = Envelope(logits, scale, workspace)
        self.top = float(self.envelope.maxima.max())
        self._make_cut = cut
        self._cut: Cut | None = None
        self._mass: float | None = None

    def draw(self, rng: np.random.Generator) -> int:
        for _ in range(NUCLEUS_TRIES):
            token = self.envelope.draw(rng)
            if self.keeps(token):
                return token
        # Rare (p near NUCLEUS_FROM on a flat row): the cut itself, exact like a kept draw.
        return self.cut().draw(rng)

    def keeps(self, token: int) -> bool:
        """Whether the cut keeps `token`: the tokens more likely than it hold under p of the
        whole mass (weights below on the scale where the top token weighs 1)."""
        logit = self.logits[token]
        if logit >= self.top:
            return True  # nothing more likely (often, at the temperatures top_p comes with)
        envelope, workspace = self.envelope, self.workspace
        columns = np.flatnonzero(envelope.maxima > logit)
        full, width, extra = workspace.full, workspace.columns, workspace.extra
        values = self.logits[: full * width].reshape(full, width)[:, columns].ravel()
        if extra:
            longer = columns[: int(np.searchsorted(columns, extra))]
            values = np.concatenate((values, self.logits[full * width + longer]))
        weights = np.exp((values.astype(np.float64) - self.top) * self.scale)
        above = float(weights[values > logit].sum())
        gathered = float(weights.sum())
        # The other columns: the envelope's total less the gathered columns' weights
        # (column_weights: sized only when the columns differ in size, else the common
        # factor `full` is left out), on the top's scale.
        unit = math.exp((envelope.shift - self.top) * self.scale) * (1 if extra else full)
        theirs = workspace.column_weights[columns].sum(dtype=np.float64)
        upper = max(envelope.total - float(theirs), 0.0) * unit * (1 + 1e-6) + 1e-300
        lower = upper / (1 + 1e-6) / (full + 1) * (1 - 1e-6)
        if above < self.top_p * (gathered + lower):
            return True
        if above >= self.top_p * (gathered + upper):
            return False
        return above < self.top_p * self.mass()

    def mass(self) -> float:
        """The whole row's mass, from float32 exps summed in float64 as `Whole`'s (once)."""
        if self._mass is None:
            weights = row_weights(self.logits, self.top, self.scale, self.workspace.weights)
            self._mass = float(block_sums(weights).sum())
        return self._mass

    def cut(self) -> Cut:
        if self._cut is None:
            self._cut = self._make_cut()
        return self._cut

    def probabilities(self) -> tuple[Ids, Floats]:
        return self.cut().probabilities()


Distribution = Cut | Whole | Envelope | Nucleus


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


def row_weights(logits: Row, top: float, scale: float, out: Row) -> Row:
    """exp(scale * (logit - top)) of every token, in float32, into `out` (one pass each)."""
    np.subtract(logits, np.float32(top), out=out)
    if scale != 1.0:
        np.multiply(out, np.float32(scale), out=out)
    return np.exp(out, out=out)


def block_sums(weights: Row) -> Floats:
    """Sums of `weights` per BLOCK tokens (the last block may be shorter), in float64."""
    whole = len(weights) // BLOCK * BLOCK
    sums: Floats = weights[:whole].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)
    if whole < len(weights):
        sums = np.concatenate((sums, [weights[whole:].sum(dtype=np.float64)]))
    return sums
