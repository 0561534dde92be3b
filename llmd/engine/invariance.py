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

Both ways below load the plain weight kernels (`LlamaBackend`) and shape every step
(`Scheduler.step`) so that each row takes the same kernel path whatever else the step holds.

Without flash attention (`Shapes.even`), steps that give every sequence at least two rows
agreed bit for bit at every length measured (2, 3, 9, 64 and 512 rows a sequence, with other
sequences in the step or not). llama.cpp cuts a step into micro-batches of consecutive
sequences, each giving as many rows as the one with fewest left (`split_equal`): the rows a
sequence gives a micro-batch are differences of the row counts in its run, so when every
count is even, none is one. Hence every piece of a step has an even number of rows. A decode
with an even number of draft tokens drops its last (the least likely to hold); one with none
drafts one token guessed from its own text (or, not speculating, adds a row it drops after
the step); a prompt chunk of odd length takes a row more or one fewer. Gap fillers (one row
each) are not used, and a full batch of decodes doubles its rows: the price at many streams.

With flash attention, a sequence's attention is computed one row at a time, the same for
every shape, except in two paths: 64 rows or more of a sequence in a micro-batch go through
tiles (so micro-batches are kept to `LONE_UBATCH` rows, and every row takes the row-at-a-time
path), and a micro-batch holding a single row of a single sequence reads a history of over
256 cells in one piece per decode thread, merged after (so with two decode threads or more no
step leaves one: `no_lone_rows`; with one there is one piece, the same sums). With micro-batches
of 63 rows, every other shape agreed bit for bit, prompt chunks too. A row is added only where
a sequence would be alone with one row (one stream without a draft, mostly), so many streams
cost nothing; prompts are read in micro-batches of 63 rows, without the tiles.

Without `engine.batch_invariant`, where flash attention is off (`flash_attn = "fastest"`, the
default, measured it slower for this model, or the operator set "off") and the model's weights
take no repacked or tiled kernel anyway (`plain_weights`), the even rows are used while the
step's decoding sequences are one request's (`Shapes.alone`): one person's answer, with and
without speculation, is the same text, and with several requests decoding, where a row more
each would cost a quarter of the throughput, steps are not shaped (their text may then part
at a near-tie from the same request alone, as with llama.cpp's own batching).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmd.engine.messages import LoadOptions
from llmd.engine.sequence import Piece, Sequence, Slot
from llmd.engine.speculate import split_equal

# How far back a guess looks for the token now pending.
GUESS_WINDOW = 4096
# The largest micro-batch under flash attention's tiles (GGML_FA_TILE_Q = 64 rows of one
# sequence in ggml-cpu): from 64 rows on, a row's scores come from a matrix product of f32
# tiles instead of one f16 row at a time.
LONE_UBATCH = 63
# The split path reads a history of 512 cells or more in view: llama.cpp views a stream's
# cells up to the last used one, padded to 256, so from position 256 on (a slot's cells are
# filled from the first: its tokens are removed from the end, and the lowest free cell is
# taken next). Some margin under that, as the cells are llama.cpp's to place.
SPLIT_FROM = 192


@dataclass(frozen=True)
class Shapes:
    """How a model's steps are shaped so that a token's logits do not depend on its step."""

    even: bool
    """Flash attention off: every piece of a step has an even number of rows."""
    n_ubatch: int
    """llama.cpp's micro-batch size (with flash attention, at most `LONE_UBATCH`)."""
    split_lone: bool
    """Flash attention on with two decode threads or more: a micro-batch of one row of one
    sequence would take the split-KV path, so none is left in a step."""
    split_from: int = SPLIT_FROM
    """The position from which a lone row may take that path."""
    alone: bool = False
    """Only while the step's decoding sequences are one request's (not `batch_invariant`)."""

    def applies(self, decoding: list[Sequence]) -> bool:
        """Whether this step is shaped, with these sequences decoding in it."""
        return not self.alone or len({id(seq.request) for seq in decoding}) <= 1


def exact_steps(shapes: Shapes | None) -> str:
    """What `shapes` make exact, as /api/v1/health says it: "always", "alone" or ""."""
    if shapes is None:
        return ""
    return "alone" if shapes.alone else "always"


# ggml types with the tiled kernel (ggml-cpu tiled/tiled.cpp): the K-quants and most i-quants,
# from 8 rows on. Repacking is told by llama.cpp's load (a CPU_REPACK or AMX buffer), as it
# depends on the CPU.
TILED_TYPES = frozenset({10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 22, 23, 29})


def plain_weights(tensor_types: set[int], extra_buffers: bool) -> bool:
    """Whether the model's weight products take the same kernels whatever the step's size
    (beyond one row against two or more, which the even rows keep apart): no tensor of a
    tiled type and nothing repacked into an extra buffer."""
    return not extra_buffers and not tensor_types & TILED_TYPES


def shapes_for(
    options: LoadOptions, flash_attn: str, embeddings: bool, plain: bool
) -> tuple[Shapes | None, int]:
    """How a model's steps are shaped, with the flash attention it runs (`attention.choose`),
    whether it is an embedding model (which reads an input whole) and whether its weights take
    the plain kernels anyway (`plain_weights`); and the micro-batch size its context gets."""
    ubatch, size = options.ubatch_size, options.batch_size
    even = flash_attn == "off"
    if options.batch_invariant:
        if not even and not embeddings:
            ubatch = min(ubatch, LONE_UBATCH)
        # The split path needs 512 cells in view: a context that holds fewer never takes it,
        # nor does one decode thread (one piece).
        split = not even and options.threads >= 2 and options.ctx_per_seq >= 512
        return Shapes(even, min(ubatch, size), split), ubatch
    if even and plain and not embeddings and ubatch >= size:  # one micro-batch a step
        return Shapes(True, size, False, alone=True), ubatch
    return None, ubatch


def lone_slot(pieces: list[Piece], shapes: Shapes) -> int | None:
    """The slot of a micro-batch holding one row of one sequence (always its last row) at a
    position that may take the split path (`Shapes.split_from`)."""
    at = {piece.slot: piece.chunk[-1][1] for piece in pieces}
    steps = sorted((piece.slot, len(piece.chunk)) for piece in pieces)
    for cut in split_equal(steps, shapes.n_ubatch):
        if len(cut) == 1 and cut[0][1] == 1 and at[cut[0][0]] >= shapes.split_from:
            return cut[0][0]
    return None


def no_lone_rows(
    pieces: list[Piece],
    shapes: Shapes,
    ctx_per_seq: int,
    batch_size: int,
    free_slots: list[Slot],
    filler: int,
) -> list[Slot]:
    """Mend the step until no micro-batch holds one row of one sequence: a draft loses its
    last token; a lone row gets a filler (token `filler`, no logits) in a free slot beside
    it without a piece in the step, after what that slot holds (which stays: the scheduler
    drops the filler's cell after the step), else a row after it that is dropped after the
    step. A filler is the cheaper: its attention reads what that slot holds, not the lone
    sequence's history, which with flash attention is most of a decode step's time several
    hundred tokens in. A step that cannot be mended (the context's last cell, a full batch
    of `batch_size` rows) is left as it is. The slots given fillers."""
    taken = {piece.slot for piece in pieces}
    free = {s.id: s for s in free_slots if s.id not in taken and len(s.cached) < ctx_per_seq}
    room = batch_size - sum(len(piece.chunk) for piece in pieces)
    added = 0
    fillers: list[Slot] = []
    for _ in range(2 * len(pieces) + 1):
        slot = lone_slot(pieces, shapes)
        if slot is None:
            break
        piece = next(p for p in pieces if p.slot == slot)
        if piece.draft:
            _drop_last(piece)
            added -= 1
            continue
        if added >= room:
            break
        beside = next((free.pop(s) for s in (slot + 1, slot - 1) if s in free), None)
        if beside is not None:
            entry = (filler, len(beside.cached), beside.id, False)
            pieces.append(Piece(beside.id, [entry], []))
            fillers.append(beside)
        elif not _add_row(piece, ctx_per_seq, speculating=False):
            break
        added += 1
    return fillers


def _drop_last(piece: Piece) -> None:
    """The draft's last token goes (the least likely to hold)."""
    assert piece.draft
    piece.chunk.pop()
    piece.draft = piece.draft[:-1]
    piece.guess = piece.guess and bool(piece.draft)


def _add_row(piece: Piece, ctx_per_seq: int, speculating: bool) -> bool:
    """A row after the piece's last: a one-token guess for a decode that may speculate,
    else one dropped after the step. False at the context's last cell: no cell after it."""
    token, pos, slot, _ = piece.chunk[-1]
    if pos + 1 >= ctx_per_seq or piece.pad:
        return False
    if piece.decode and speculating and _may_guess(piece.samplers[0]):
        guess = guess_next(piece.samplers[0])
        piece.chunk.append((guess, pos + 1, slot, True))
        piece.draft = [guess]
        piece.guess = True
    else:  # causal: the rows before it do not see it
        piece.chunk.append((token, pos + 1, slot, False))
        piece.pad = 1
    return True


def _may_guess(seq: Sequence) -> bool:
    state = seq.request
    return bool(state.req.speculative) and state.max_tokens - seq.generated > 1


def even_decodes(pieces: list[Piece], ctx_per_seq: int, speculating: bool) -> None:
    """Give each decode piece an even number of rows."""
    for piece in pieces:
        if len(piece.chunk) % 2 == 0:
            continue
        if piece.draft:  # its last draft token goes: 1 + an odd number of them is even
            _drop_last(piece)
        else:
            _add_row(piece, ctx_per_seq, speculating)


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
