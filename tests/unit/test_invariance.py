"""`engine.batch_invariant` (llmd/engine/invariance.py) on the fake backend and in the
settings: every sequence gives every step an even number of rows (so no micro-batch holds one
row of a sequence), answers are those of the usual steps, rows added only for evenness leave no
cells, and the settings that cannot hold it are refused. The real model's proof is
tests/e2e/test_batch_invariant.py."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import cast

import pytest
from pydantic import ValidationError

from bench.daemon import MODELS, SMOL
from llmd.engine.invariance import even_chunk, guess_next
from llmd.engine.messages import Embedding, SpeculativeOptions
from llmd.engine.scheduler import Scheduler
from llmd.engine.sequence import Sequence
from llmd.gguf import estimate, read_model
from llmd.models import engine_options
from llmd.settings import Settings
from tests.unit.fake_backend import FakeBackend, request, run_to_end, text_of
from tests.unit.test_speculative import ON, Free, cells_match


def run(
    invariant: bool, spec: SpeculativeOptions | None = ON
) -> tuple[FakeBackend, Scheduler, dict]:
    b = FakeBackend(parallel=4, batch_size=32, answer="abcabcabcab")
    s = Scheduler(b, 256, add_bos=False, bos=1, speculative=spec, costs=Free())
    s.batch_invariant = invariant
    s.fill_gaps = not invariant
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
    [
        ({"flash_attn": "on"}, 'not flash_attn = "on"'),
        ({"flash_attn": "fastest"}, 'not flash_attn = "fastest"'),
        ({"kv_type": "q8_0"}, 'kv_type "f16" or "f32"'),
    ],
)
def test_settings_that_cannot_hold_it_are_refused(engine: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings.model_validate({"engine": {"batch_invariant": True, **engine}})


def test_the_options_turn_flash_attention_off_and_hold_a_step_in_one_micro_batch() -> None:
    settings = Settings.model_validate(
        {
            "models_dir": str(MODELS),
            "engine": {"batch_invariant": True, "batch_size": 512, "ubatch_size": 256},
            "models": {"m": {"path": SMOL}},
        }
    )
    load = engine_options(settings, settings.models["m"], MODELS / SMOL).load
    assert load.batch_invariant and load.flash_attn == "off" and load.ubatch_size == 512
    usual = Settings.model_validate({"models_dir": str(MODELS), "models": {"m": {"path": SMOL}}})
    load = engine_options(usual, usual.models["m"], MODELS / SMOL).load
    assert not load.batch_invariant and load.flash_attn == "auto"


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
        s.batch_invariant = invariant
        s.fill_gaps = not invariant
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
