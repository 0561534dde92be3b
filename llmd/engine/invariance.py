"""Steps shaped so that a token's logits do not depend on how it was batched
(`engine.batch_invariant`).

llama.cpp's CPU kernels pick their summation order by the shape of the work: with flash
attention off, the f16 attention products of a sequence go through llamafile's matrix kernel
when the sequence has two rows or more in a micro-batch and through a dot product per row when
it has one; with flash attention on, a lone one-row step reads a history of over 256 cells in
parallel pieces (split-KV) and a step of 64 rows or more in tiles, each summed otherwise; and
repacked or tiled K-quant weights (the latter from 8 rows up) are summed otherwise again.
Measured on llmd's own context (bench/invariance.py, docs/benchmarks.md), SmolLM2's logits
for the same 9 tokens moved by up to 0.66 between one step and nine 700 tokens in, and greedy
text with speculation parted from the text without at a near-tie in 1 of 120 tokens (3 with
flash attention off) after a 608-token quoting prompt.

Without flash attention, with plain weight kernels, steps that give every sequence at least two
rows agreed bit for bit at every length measured (2, 3, 9, 64 and 512 rows a sequence, with
other sequences in the step or not). llama.cpp cuts a step into micro-batches of consecutive
sequences, each giving as many rows as the one with fewest left (`micro_batches`): the rows a
sequence gives a micro-batch are differences of the row counts in its run, so when every
count is even, none is one. Hence the rule here: every piece of a step has an even number of
rows. A decode with an even number of draft tokens drops its last (the least likely to hold);
one with none drafts one token guessed from its own text (or, not speculating, adds a row it
drops after the step); a prompt chunk of odd length takes a row more or one fewer
(`Scheduler.step`). Gap fillers (one row each) are not used.
"""

from __future__ import annotations

from llmd.engine.sequence import Piece, Sequence

# How far back a guess looks for the token now pending.
GUESS_WINDOW = 4096


def even_decodes(pieces: list[Piece], ctx_per_seq: int, speculating: bool) -> int:
    """Give each decode piece an even number of rows; the rows added (fewer if negative)."""
    added = 0
    for piece in pieces:
        if len(piece.chunk) % 2 == 0:
            continue
        if piece.draft:  # its last draft token goes: 1 + an odd number of them is even
            piece.chunk.pop()
            piece.draft = piece.draft[:-1]
            added -= 1
            continue
        seq = piece.samplers[0]
        token, pos, slot, _ = piece.chunk[-1]
        if pos + 1 >= ctx_per_seq:
            continue  # the context's last cell: no room for a second row
        state = seq.request
        if speculating and state.req.speculative and state.max_tokens - seq.generated > 1:
            guess = guess_next(seq)
            piece.chunk.append((guess, pos + 1, slot, True))
            piece.draft = [guess]
            piece.guess = True
        else:
            piece.chunk.append((token, pos + 1, slot, False))
            piece.pad = 1
        added += 1
    return added


def even_chunk(take: int, room: int, start: int, ctx_per_seq: int) -> tuple[int, int] | None:
    """A prompt chunk of `take` rows from position `start`, with `room` rows left in the step,
    made even: (rows, pad rows after them) — a row more (a copy of the last token one position
    on, which the chunk's rows do not see and which is dropped after the step) or one fewer;
    None: room for one row only, the chunk waits for the next step. The context's very last
    row stays odd: there is no cell after it."""
    if take % 2 == 0:
        return take, 0
    if take < room and start + take < ctx_per_seq:
        return take, 1
    if take > 1:
        return take - 1, 0
    if take == room:
        return None
    return take, 0


def guess_next(seq: Sequence) -> int:
    """The token that followed the pending one where it last stood in the sequence's text (a
    one-token n-gram lookup), else the pending token again."""
    assert seq.pending is not None
    cached = seq.slot.cached
    start = max(0, len(cached) - 1 - GUESS_WINDOW)
    window = cached[start : len(cached) - 1]  # a token with one after it
    try:
        at = len(window) - 1 - window[::-1].index(seq.pending)
    except ValueError:
        return seq.pending
    return cached[start + at + 1]
