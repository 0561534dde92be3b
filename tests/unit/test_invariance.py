"""`engine.batch_invariant` (llmd/engine/invariance.py) on the fake backend and in the
settings. Flash attention off: every sequence gives every step an even number of rows (so no
micro-batch holds one row of a sequence). On: no micro-batch holds one row of one sequence
alone, cut as llama.cpp cuts them. Either way answers are those of the usual steps, rows
added only to shape a step leave no cells, and the setting that cannot hold it is refused.
The real model's proof is tests/e2e/test_batch_invariant.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import ValidationError

from bench.daemon import MODELS, SMOL
from llmd.engine.invariance import (
    Shapes,
    even_chunk,
    exact_steps,
    guess_next,
    lone_slot,
    no_lone_rows,
    plain_weights,
    shapes_for,
)
from llmd.engine.messages import Embedding, LoadOptions, SpeculativeOptions
from llmd.engine.scheduler import Scheduler
from llmd.engine.sequence import Piece, Sequence, Slot
from llmd.engine.speculate import split_equal
from llmd.gguf import estimate, read_model
from llmd.models import engine_options
from llmd.settings import Settings
from tests.unit.fake_backend import FakeBackend, request, run_to_end, text_of
from tests.unit.test_speculative import ON, Free, cells_match

EVEN = Shapes(even=True, n_ubatch=32, split_lone=False)
LONE = Shapes(even=False, n_ubatch=8, split_lone=True, split_from=0)
ALONE = Shapes(even=True, n_ubatch=32, split_lone=False, alone=True)


def run(
    invariant: bool, spec: SpeculativeOptions | None = ON
) -> tuple[FakeBackend, Scheduler, dict]:
    b = FakeBackend(parallel=4, batch_size=32, answer="abcabcabcab")
    s = Scheduler(b, 256, add_bos=False, bos=1, speculative=spec, costs=Free())
    s.shapes = EVEN if invariant else None
    # Odd and even prompts, one longer than a step; one request does not speculate.
    s.submit(request("a", "abcab", max_tokens=9))
    s.submit(request("b", "abcabcabcabcabcabcabcabcabcabcabcabcabc", max_tokens=7))
    s.submit(request("c", "xyz", max_tokens=6, speculative=False))
    events = run_to_end(s)
    return b, s, events


def test_every_sequence_gives_every_step_an_even_number_of_rows() -> None:
    b, s, events = run(True)
    for batch in b.batches:
        rows = Counter(seq for _, _, seq, _ in batch)
        assert all(n % 2 == 0 for n in rows.values()), batch
    cells_match(s, b)  # the rows added for evenness were dropped
    _, _, usual = run(False)
    for rid in ("a", "b", "c"):
        assert text_of(events[rid]) == text_of(usual[rid])
    assert s.drafts.drafted > 0


def test_without_speculation_a_decode_gets_a_row_it_drops() -> None:
    b, s, events = run(True, spec=None)
    for batch in b.batches:
        rows = Counter(seq for _, _, seq, _ in batch)
        assert all(n % 2 == 0 for n in rows.values()), batch
    assert s.drafts.drafted == 0
    cells_match(s, b)
    kept = sum(len(slot.cached) for slot in s.slots)
    assert sum(len(batch) for batch in b.batches) > kept  # rows decoded, then dropped
    _, _, usual = run(False, spec=None)
    assert text_of(events["a"]) == text_of(usual["a"])


def test_a_guess_is_what_followed_the_pending_token_last() -> None:
    seq = cast("Sequence", SimpleNamespace(slot=SimpleNamespace(cached=[5, 6, 7, 5, 8, 9])))
    seq.pending = 5
    assert guess_next(seq) == 8  # the latest 5 with a token after it
    seq.pending = 9
    assert guess_next(seq) == 9  # 9 only at the end: nothing followed it
    seq.pending = 4
    assert guess_next(seq) == 4


@pytest.mark.parametrize(
    ("engine", "reason"),
    [({"flash_attn": "off", "kv_type": "q8_0"}, 'kv_type "f16" or "f32"')],
)
def test_settings_that_cannot_hold_it_are_refused(engine: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings.model_validate({"engine": {"batch_invariant": True, **engine}})
    for flash_attn in ("auto", "on", "fastest"):  # a q8_0 cache with flash attention holds
        Settings.model_validate(
            {"engine": {"batch_invariant": True, "flash_attn": flash_attn, "kv_type": "q8_0"}}
        )


@pytest.mark.parametrize(("flash_attn", "chosen"), [("auto", "on"), ("off", "off"), ("on", "on")])
def test_the_options_name_flash_attention_and_hold_a_step_in_one_micro_batch(
    flash_attn: str, chosen: str
) -> None:
    engine = {"batch_invariant": True, "batch_size": 512, "ubatch_size": 256}
    settings = Settings.model_validate(
        {
            "models_dir": str(MODELS),
            "engine": {**engine, "flash_attn": flash_attn},
            "models": {"m": {"path": SMOL}},
        }
    )
    load = engine_options(settings, settings.models["m"], MODELS / SMOL).load
    # "auto" is llama.cpp's choice inside the context: the steps' shapes must know it.
    assert load.batch_invariant and load.flash_attn == chosen and load.ubatch_size == 512
    usual = Settings.model_validate({"models_dir": str(MODELS), "models": {"m": {"path": SMOL}}})
    load = engine_options(usual, usual.models["m"], MODELS / SMOL).load
    # The default measures flash attention at load (llmd/engine/attention.py).
    assert not load.batch_invariant and load.flash_attn == "fastest"


def test_the_estimate_counts_attention_scores_without_flash_attention() -> None:
    model = read_model(MODELS / SMOL)
    with_fa = estimate(model, 2048, 4, 256)
    without = estimate(model, 2048, 4, 256, attention_scores=True)
    # SmolLM2: 9 heads; float32 scores and their softmax for 256 rows by 2048 cells.
    assert without.compute - with_fa.compute == 2 * 4 * 256 * 2048 * 9
    assert without.weights == with_fa.weights and without.kv_cache == with_fa.kv_cache


def test_an_embedding_read_beside_decodes_keeps_even_rows_and_pools_only_its_input() -> None:
    def embed(invariant: bool) -> tuple[FakeBackend, bytes]:
        b = FakeBackend(parallel=4, batch_size=32, answer="abcabcabcab")
        s = Scheduler(b, 256, add_bos=False, bos=1, speculative=ON, costs=Free())
        s.shapes = EVEN if invariant else None
        s.submit(request("a", "abcab", max_tokens=9))
        s.step()  # "a" decodes from now on
        s.submit(request("e", "x" * 45, embed=True))  # odd: 45 rows
        events = run_to_end(s)
        vector = next(e.vector for e in events["e"] if isinstance(e, Embedding))
        return b, vector

    b, vector = embed(True)
    for batch in b.batches:
        rows = Counter(seq for _, _, seq, _ in batch)
        assert all(n % 2 == 0 for n in rows.values()), batch
    assert vector == embed(False)[1]


def test_a_prompt_chunk_is_made_even_by_a_row_more_or_one_fewer() -> None:
    assert even_chunk(8, 32, 0, 256) == (8, 0)
    assert even_chunk(7, 32, 0, 256) == (7, 1)  # the prompt's end: a row dropped after
    assert even_chunk(7, 7, 0, 256) == (6, 0)  # the step is full: one row waits
    assert even_chunk(1, 1, 0, 256) is None  # one row of room: the next step
    assert even_chunk(7, 32, 249, 256) == (6, 0)  # no cell after the chunk's end
    assert even_chunk(1, 32, 255, 256) == (1, 0)  # the context's last row stays odd


def test_split_equal_cuts_runs_of_consecutive_slots_and_by_size() -> None:
    # Slots 0 and 1 are one run; 3 is apart; each gives as many rows as the fewest left.
    assert split_equal([(0, 1), (1, 3), (3, 2)], 256) == [[(0, 1), (1, 1)], [(1, 2)], [(3, 2)]]
    # At most n_ubatch rows: 3 sequences of 5 in micro-batches of 8 rows.
    assert split_equal([(0, 5), (1, 5), (2, 5)], 8) == [
        [(0, 2), (1, 2), (2, 2)],
        [(0, 2), (1, 2), (2, 2)],
        [(0, 1), (1, 1), (2, 1)],
    ]
    assert split_equal([(2, 9)], 8) == [[(2, 8)], [(2, 1)]]


def lone_run(shapes: Shapes | None, spec: SpeculativeOptions | None = ON) -> tuple:
    b = FakeBackend(parallel=4, batch_size=32, answer="abcabcabcab")
    s = Scheduler(b, 256, add_bos=False, bos=1, speculative=spec, costs=Free())
    s.shapes = shapes
    # A prompt of 9 rows (8 and 1 in micro-batches of 8), one longer than a step, one that
    # does not speculate; the last to finish decodes alone, beside free slots.
    s.submit(request("a", "abcabcabc", max_tokens=9))
    s.submit(request("b", "abcabcabcabcabcabcabcabcabcabcabcabcabc", max_tokens=7))
    s.submit(request("c", "xyz", max_tokens=6, speculative=False))
    events = run_to_end(s)
    return b, s, events


@pytest.mark.parametrize("spec", [ON, None])
def test_with_flash_attention_no_micro_batch_holds_one_row_of_one_sequence(
    spec: SpeculativeOptions | None,
) -> None:
    b, s, events = lone_run(LONE, spec)
    for batch in b.batches:
        steps = sorted(Counter(slot for _, _, slot, _ in batch).items())
        assert lone_slot_of(steps) is None, batch
    cells_match(s, b)  # the rows added to shape the steps were dropped
    assert s.num_fillers > 0  # a lone row's filler went into a free slot beside it
    usual, _, plain = lone_run(None, spec)
    for rid in ("a", "b", "c"):
        assert text_of(events[rid]) == text_of(plain[rid])
    # Without the shapes the same requests did leave single rows alone.
    assert any(
        lone_slot_of(sorted(Counter(slot for _, _, slot, _ in batch).items())) is not None
        for batch in usual.batches
    )


def lone_slot_of(steps: list[tuple[int, int]]) -> int | None:
    cuts = split_equal(steps, LONE.n_ubatch)
    return next((cut[0][0] for cut in cuts if len(cut) == 1 and cut[0][1] == 1), None)


def test_a_lone_row_gets_a_filler_beside_it_or_a_row_after_and_a_draft_loses_a_token() -> None:
    seq = cast(Sequence, SimpleNamespace())
    draft = Piece(0, [(5, 10, 0, True), (6, 11, 0, True)], [seq], draft=[6], decode=True)
    lone = Piece(2, [(7, 10, 2, True)], [], decode=False)  # a prompt's last row, alone
    # Slot 0: rows 2 (pending + draft), alone in its run: fine; slot 2: one row alone. With
    # slot 3 free (its cache holding 4 cells), a filler goes there: no row after slot 2's.
    assert lone_slot([draft, lone], LONE) == 2
    pieces = [draft, lone]
    free = Slot(3, cached=[9, 9, 9, 9])
    assert no_lone_rows(pieces, LONE, 256, 7, [free], filler=1) == [free]  # room: 4 rows
    assert pieces[-1].chunk == [(1, 4, 3, False)] and lone.pad == 0
    assert lone_slot(pieces, LONE) is None
    # No free slot beside it: a row after it, dropped after the step.
    assert no_lone_rows([lone := Piece(2, [(7, 10, 2, True)], [])], LONE, 256, 5, [], 1) == []
    assert lone.pad == 1 and lone.chunk[-1] == (7, 11, 2, False)
    # Slots 0 and 1 side by side with 1 and 2 rows: the second's last row would be alone.
    one = Piece(0, [(5, 10, 0, True)], [seq], decode=True)
    two = Piece(1, [(5, 10, 1, True), (6, 11, 1, True)], [seq], draft=[6], decode=True)
    assert lone_slot([one, two], LONE) == 1
    assert no_lone_rows([one, two], LONE, 256, 7, [Slot(2)], 1) == []
    assert two.draft == [] and len(two.chunk) == 1 and lone_slot([one, two], LONE) is None
    # Before the split path's position (a view under 512 cells), a lone row is left alone.
    early = Piece(2, [(7, 10, 2, True)], [])
    assert lone_slot([early], Shapes(even=False, n_ubatch=63, split_lone=True)) is None
    assert lone_slot([early], LONE) == 2
    # No room left in the batch: the step stays as it is.
    alone = Piece(3, [(7, 10, 3, True)], [], decode=False)
    assert no_lone_rows([alone], LONE, 256, 1, [Slot(2)], 1) == [] and alone.pad == 0


def even_batch(batch: list[tuple[int, int, int, bool]]) -> bool:
    return all(n % 2 == 0 for n in Counter(slot for _, _, slot, _ in batch).values())


def test_alone_the_even_rows_shape_only_the_steps_of_one_requests_decodes() -> None:
    b = FakeBackend(parallel=4, batch_size=32, answer="abcabcabcab")
    s = Scheduler(b, 256, add_bos=False, bos=1, speculative=ON, costs=Free())
    s.shapes = ALONE
    # One request with two choices: its decodes are one person's answer, shaped.
    s.submit(request("a", "abcab", max_tokens=9, n=2))
    alone = run_to_end(s)
    assert all(even_batch(batch) for batch in b.batches), b.batches
    assert text_of(alone["a"], 0) == text_of(alone["a"], 1) != ""
    first = len(b.batches)
    # Two requests decoding together: steps as usual (the one not speculating has one row).
    s.submit(request("b", "abcab", max_tokens=9))
    s.submit(request("c", "xyzxy", max_tokens=9, speculative=False))
    together = run_to_end(s)
    assert not all(even_batch(batch) for batch in b.batches[first:])
    cells_match(s, b)  # the rows added for evenness were dropped
    assert text_of(together["b"]) == text_of(alone["a"])
    assert text_of(together["c"]) != ""


def test_the_shapes_follow_flash_attention_the_weights_and_the_setting() -> None:
    options = LoadOptions(MODELS / SMOL, 2048, 4, 256, 256, 1, 2, "fastest", "f16")
    # Flash attention off (measured or set) and plain weights: shaped while alone.
    alone = Shapes(True, 256, False, alone=True)
    assert shapes_for(options, "off", False, True) == (alone, 256)
    assert exact_steps(alone) == "alone" and exact_steps(None) == ""
    assert shapes_for(options, "on", False, True) == (None, 256)  # one row a step is exact
    assert shapes_for(options, "off", False, False) == (None, 256)  # repacked or tiled weights
    assert shapes_for(options, "off", True, True) == (None, 256)  # an embedding model
    small = replace(options, ubatch_size=128)  # a step in two micro-batches could leave one
    assert shapes_for(small, "off", False, True) == (None, 128)
    invariant = replace(options, batch_invariant=True)
    shapes, ubatch = shapes_for(invariant, "on", False, False)
    assert shapes == Shapes(False, 63, False) and ubatch == 63
    assert exact_steps(shapes) == "always"


def test_plain_weights_are_neither_tiled_nor_repacked() -> None:
    assert plain_weights({0, 3, 8}, False)  # SmolLM2's Q4_1, Q8_0 and F32 tensors
    assert not plain_weights({0, 6, 8, 12, 14}, False)  # Gemma-3's Q4_K and Q6_K: tiled
    assert not plain_weights({0, 2}, True)  # Q4_0 repacked into a CPU_REPACK buffer
