"""The draft model (llmd/engine/draft.py) in-process on real files: SmolLM2 drafting for itself
through a copy re-quantised with `llmd models quantize` (same vocabulary, other weights). Its
drafts are checked against greedy decoding of the draft model alone, after each way a slot's
tokens change between calls; the vocabulary check refuses Gemma-3's tokens for SmolLM2."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp as lc
import pytest

from bench.daemon import GEMMA, MODELS, SMOL
from llmd.engine.draft import DraftModel, vocabulary_mismatch
from llmd.engine.draft_protocol import DraftAsk
from llmd.engine.llama import LlamaBackend, LoadError
from llmd.engine.messages import LoadOptions
from llmd.quantize import quantize
from llmd.sampling import resolve

CTX = 256


def options(path: Path, draft: Path | None = None, parallel: int = 2) -> LoadOptions:
    return LoadOptions(path, CTX, parallel, 64, 64, 1, 1, "auto", "f16", draft_path=draft)


@pytest.fixture(scope="session")
def draft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 re-quantised from its Q4_1 file to Q4_0: the same tokenizer, other weights."""
    out = tmp_path_factory.mktemp("draft") / "smol-q4_0.gguf"
    quantize(MODELS / SMOL, out, "q4_0", allow_requantize=True, out=io.StringIO())
    return out


@pytest.fixture(scope="module")
def main(draft_file: Path) -> Iterator[LlamaBackend]:
    b = LlamaBackend(options(MODELS / SMOL, draft_file))
    yield b
    b.close()


@pytest.fixture(scope="module")
def alone(draft_file: Path) -> Iterator[LlamaBackend]:
    """The draft model loaded as a model of its own: the reference for its drafts."""
    b = LlamaBackend(options(draft_file, parallel=1))
    yield b
    b.close()


def greedy(b: LlamaBackend, tokens: Sequence[int], n: int) -> list[int]:
    """Up to `n` tokens greedy decoding writes after `tokens` (to the first end of generation
    included), one sequence, one token a step."""
    b.seq_rm(0, -1, -1)
    entries = [(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)]
    for first in range(0, len(entries), b.batch_size):
        assert b.decode(entries[first : first + b.batch_size]) == 0
    sampler = b.new_sampler(resolve(temperature=0.0), 0)
    out: list[int] = []
    index = (len(tokens) - 1) % b.batch_size
    while len(out) < n:
        out.append(b.sample(sampler, index))
        if b.is_eog(out[-1]):
            break
        assert b.decode([(out[-1], len(tokens) + len(out) - 1, 0, True)]) == 0
        index = 0
    b.free_sampler(sampler)
    return out


def prompt(b: LlamaBackend, text: str) -> list[int]:
    return b.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", False)


def cells(drafter: DraftModel, slot: int) -> int:
    """How many positions the slot's cells hold (they are always 0..n-1)."""
    return int(lc.llama_memory_seq_pos_max(drafter.memory, slot)) + 1


def test_drafts_are_what_the_draft_model_alone_writes_as_the_slots_change(
    main: LlamaBackend, alone: LlamaBackend
) -> None:
    drafter = main.drafter
    assert isinstance(drafter, DraftModel)
    a = prompt(main, "Name three colours.")
    b = prompt(main, "Write a haiku about the sea, please.")
    # First call: both slots catch up from nothing, in one batch, then draft together.
    got = drafter.propose([DraftAsk(0, a, 6), DraftAsk(1, b, 4)])
    assert got == [greedy(alone, a, 6), greedy(alone, b, 4)]
    assert len(got[0]) == 6 and len(got[1]) == 4
    for slot, tokens, draft in ((0, a, got[0]), (1, b, got[1])):
        assert drafter.held[slot] == [*tokens, *draft[:-1]]  # the drafts' cells stay
        assert cells(drafter, slot) == len(drafter.held[slot])

    # The main model accepted two of slot 0's drafts and corrected the third; slot 1 took
    # all four and the token after them. Only what differs from the cells is decoded.
    correction = next(t for t in range(100, 200) if t != got[0][2])
    a2 = [*a, *got[0][:2], correction]
    b2 = [*b, *got[1], greedy(alone, [*b, *got[1]], 1)[0]]
    again = drafter.propose([DraftAsk(0, a2, 5), DraftAsk(1, b2, 3)])
    assert again == [greedy(alone, a2, 5), greedy(alone, b2, 3)]
    assert drafter.held[0][: len(a2)] == a2 and drafter.held[1][: len(b2)] == b2

    # Slot 0 is given another conversation that shares only the template's start: the cells
    # are cut to the common prefix. A k of 1 needs no step past the catch-up.
    c = prompt(main, "What is two plus two?")
    shared = next(i for i, (x, y) in enumerate(zip(a2, c, strict=False)) if x != y)
    assert 0 < shared < len(c) - 1
    third = drafter.propose([DraftAsk(0, c, 1)])
    assert third == [greedy(alone, c, 1)]
    assert drafter.held[0] == c and cells(drafter, 0) == len(c)

    # Shorter than what the cells hold (a sequence cut back): the same again.
    assert drafter.propose([DraftAsk(0, a[:7], 3)]) == [greedy(alone, a[:7], 3)]

    drafter.forget(0)
    assert drafter.held.get(0, []) == [] and cells(drafter, 0) == 0
    assert cells(drafter, 1) == len(drafter.held[1])  # the other slot keeps its cells
    assert drafter.propose([DraftAsk(0, b, 2)]) == [greedy(alone, b, 2)]


def test_a_draft_never_runs_past_the_slot_context(main: LlamaBackend) -> None:
    drafter = main.drafter
    assert isinstance(drafter, DraftModel)
    tokens = (prompt(main, "Count: " + " ".join(str(i) for i in range(200))) * 2)[: CTX - 2]
    got = drafter.propose([DraftAsk(1, tokens, 8), DraftAsk(0, tokens[:CTX], 0)])
    # Positions up to CTX - 1: the last token's, then two drafts, the second not decoded.
    assert len(got[0]) <= 3 and got[1] == []
    assert cells(drafter, 1) <= CTX
    drafter.forget(1)


def test_catch_up_longer_than_a_batch_is_decoded_in_chunks(
    main: LlamaBackend, alone: LlamaBackend
) -> None:
    drafter = main.drafter
    assert isinstance(drafter, DraftModel)
    long = prompt(main, "Repeat after me: " + "the quick brown fox jumps over the lazy dog " * 12)
    assert len(long) > 64 * 1.5  # the batch size of `options`
    short = prompt(main, "Hi")
    drafter.forget(0)
    drafter.forget(1)
    got = drafter.propose([DraftAsk(0, long, 4), DraftAsk(1, short, 4)])
    assert got == [greedy(alone, long, 4), greedy(alone, short, 4)]


def test_a_draft_of_another_vocabulary_is_refused_naming_both_files() -> None:
    gemma = MODELS / GEMMA
    with pytest.raises(LoadError) as err:
        LlamaBackend(options(MODELS / SMOL, gemma))
    message = str(err.value)
    assert str(gemma) in message and str(MODELS / SMOL) in message
    assert "tokenizer types differ (model BPE, draft SPM)" in message
    assert "token 5 is b'<file_sep>' in the model, b'[multimodal]' in the draft" in message


def test_vocabulary_check_passes_the_same_tokenizer(main: LlamaBackend) -> None:
    drafter = main.drafter
    assert isinstance(drafter, DraftModel)
    assert vocabulary_mismatch(main.vocab, drafter.vocab) is None
    assert vocabulary_mismatch(main.vocab, main.vocab) is None


def test_a_missing_draft_file_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="draft model file not found: .*nothing.gguf"):
        LlamaBackend(options(MODELS / SMOL, tmp_path / "nothing.gguf"))
