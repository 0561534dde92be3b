"""The engine step (llmd/engine/scheduler.py) on a fake backend (the real one is covered through
the daemon): generation and its limits, grammars, chunked prefill, n choices, cancelling, the
order of a batch, embeddings. Admission has its own tests (test_admission.py)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from llmd.engine.messages import Delta, Embedding, Failed, GenerateRequest, Grammar, Started
from llmd.engine.scheduler import Scheduler, embed_chunk
from llmd.sampling import resolve
from tests.unit.fake_backend import FakeBackend, request, run_to_end, text_of


def test_generates_until_eos_and_counts_tokens() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    assert isinstance(s.submit(request("a", "hello"))[0], Started)
    events = run_to_end(s)["a"]
    assert text_of(events) == "abc"
    deltas = [e for e in events if isinstance(e, Delta)]
    assert sum(d.tokens for d in deltas) == 4  # a, b, c and the EOS
    assert deltas[-1].finish_reason == "stop"


def test_max_tokens_gives_length() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    s.submit(request("a", "hello", max_tokens=2))
    events = run_to_end(s)["a"]
    assert text_of(events) == "ab"
    assert [e.finish_reason for e in events if isinstance(e, Delta)][-1] == "length"


def test_context_overflow_is_refused_with_numbers() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    (failed,) = s.submit(request("a", "hello", max_tokens=10))
    assert isinstance(failed, Failed) and failed.status == 400
    assert failed.code == "context_length_exceeded" and "8 tokens" in failed.message
    assert "15" in failed.message
    (started,) = s.submit(request("b", "hello"))
    assert isinstance(started, Started) and started.max_tokens == 3


def test_a_limit_up_to_the_room_is_cut_to_the_room() -> None:
    """Anthropic's max_tokens is a ceiling: what the context leaves, not a refusal."""
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    (started,) = s.submit(request("a", "hello", max_tokens=10, max_tokens_up_to_room=True))
    assert isinstance(started, Started) and started.max_tokens == 3
    (started,) = s.submit(request("b", "hello", max_tokens=2, max_tokens_up_to_room=True))
    assert isinstance(started, Started) and started.max_tokens == 2
    (failed,) = s.submit(request("c", "helloabc", max_tokens=2, max_tokens_up_to_room=True))
    assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"  # no room


def test_a_count_only_request_is_counted_and_never_queued() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    # Past the context with its max_tokens: counted all the same, as count_tokens answers.
    (counted,) = s.submit(request("a", "hello", max_tokens=10, count_only=True))
    assert counted == Started("a", 5, 0)
    assert not s.has_work()


def test_client_text_spans_are_tokenized_as_text_and_the_markup_with_specials() -> None:
    b = FakeBackend()
    s = Scheduler(b, ctx_per_seq=64, add_bos=False, bos=1)
    prompt = "<u>hi<e><u>x</e>"
    (started,) = s.submit(request("a", prompt, max_tokens=2, text_spans=[(3, 5), (11, 12)]))
    assert isinstance(started, Started) and started.prompt_tokens == len(prompt)
    assert b.tokenized == [
        ("<u>", True),
        ("hi", False),
        ("<e><u>", True),
        ("x", False),
        ("</e>", True),
    ]
    b.tokenized.clear()
    s.submit(request("b", prompt, max_tokens=2))
    assert b.tokenized == [(prompt, True)]  # no spans: one call, as always


def test_a_prompt_too_long_to_ever_fit_is_refused_before_tokenizing() -> None:
    b = FakeBackend()
    s = Scheduler(b, ctx_per_seq=8, add_bos=False, bos=1)
    (failed,) = s.submit(request("a", "x" * (8 * 32 + 1)))
    assert isinstance(failed, Failed) and failed.code == "context_length_exceeded"
    assert "257 characters" in failed.message and b.tokenized == []


def test_a_grammar_that_cannot_be_used_is_refused_before_the_queue() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    bad = resolve(grammar=Grammar("gbnf", "bad", param="grammar"))
    (failed,) = s.submit(GenerateRequest("a", "hello", bad))
    assert isinstance(failed, Failed) and failed.status == 400 and failed.param == "grammar"
    assert not s.has_work()
    good = resolve(grammar=Grammar("json_object"))
    assert isinstance(s.submit(GenerateRequest("b", "hello", good))[0], Started)
    assert good.grammar is not None and good.grammar.gbnf == "compiled"


def test_ignore_eos_gives_way_to_a_complete_grammar() -> None:
    # Without a grammar ignore_eos runs to max_tokens; with one, the end of generation is
    # the only token a complete grammar allows, so it ends the answer.
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    s.submit(request("free", "hello", max_tokens=6, ignore_eos=True))
    held = resolve(grammar=Grammar("json_object"), max_tokens=6)
    s.submit(GenerateRequest("held", "hello", held, ignore_eos=True))
    events = run_to_end(s)
    finishes = {
        k: [e.finish_reason for e in v if isinstance(e, Delta)][-1] for k, v in events.items()
    }
    assert finishes == {"free": "length", "held": "stop"}
    assert text_of(events["held"]) == "abc"


def test_chunked_prefill_never_exceeds_the_batch_and_keeps_decoding() -> None:
    backend = FakeBackend(batch_size=8, answer="x" * 30)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("short", "hi", max_tokens=20))
    s.step()
    s.step()
    s.submit(request("long", "y" * 100, max_tokens=2))
    steps_during_prefill = 0
    while s.has_work():
        before = len(backend.batches)
        s.step()
        if len(backend.batches) > before:
            batch = backend.batches[-1]
            assert len(batch) <= 8
            seqs = {seq for _, _, seq, _ in batch}
            if len(seqs) == 2:
                steps_during_prefill += 1
    # The short request kept getting a token every step while the long prompt was read.
    assert steps_during_prefill >= 10


def test_n_choices_share_the_prompt() -> None:
    backend = FakeBackend()
    s = Scheduler(backend, ctx_per_seq=64, add_bos=False, bos=1)
    s.submit(request("a", "prompt", n=3))
    events = run_to_end(s)["a"]
    assert [text_of(events, i) for i in range(3)] == ["abc", "abc", "abc"]
    prompt_tokens_decoded = sum(1 for b in backend.batches for e in b if e[1] < len("prompt"))
    assert prompt_tokens_decoded == len("prompt")  # read once, not three times


def test_cancel_frees_the_slot_at_the_next_step() -> None:
    s = Scheduler(FakeBackend(parallel=1, answer="q" * 100), ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("a", "hello", max_tokens=90))
    s.submit(request("b", "world", max_tokens=2))
    s.step()
    assert s.stats().running == 1 and s.stats().waiting == 1
    s.cancel("a")
    events = run_to_end(s)
    assert text_of(events["b"]) == "qq"
    assert all(slot.seq is None for slot in s.slots)


def test_prompts_arriving_together_are_read_one_per_step() -> None:
    backend = FakeBackend(batch_size=256, answer="x" * 5)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("a", "A" * 40))
    s.submit(request("b", "B" * 40))
    s.submit(request("tiny1", "c" * 3))
    s.submit(request("tiny2", "d" * 3))
    first_token: dict[str, int] = {}
    for step in range(20):
        for e in s.step():
            if isinstance(e, Delta):
                first_token.setdefault(e.id, step)
    # a's prompt fills the first step alone, so a streams one step earlier than b; short
    # prompts still share a step.
    assert first_token["a"] == 0 and first_token["b"] == 1
    assert first_token["tiny1"] == first_token["tiny2"] == 2
    assert {seq for _, _, seq, _ in backend.batches[0]} == {0}


def test_batches_are_in_slot_order() -> None:
    """llama.cpp splits a batch into micro-batches of consecutive sequence ids (one KV stream
    per slot): a batch out of slot order costs extra passes over the weights."""
    backend = FakeBackend(parallel=6, batch_size=64, answer="y" * 30)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    lengths = [3, 17, 5, 29, 2, 11, 7, 23, 13, 4, 19, 8, 27, 6, 15, 9]
    events: dict[str, list[Any]] = {}
    for wave in range(0, len(lengths), 4):
        for i, n in enumerate(lengths[wave : wave + 4], start=wave):
            s.submit(request(f"r{i}", chr(ord("a") + i) * (5 + i), max_tokens=n))
        for _ in range(6):
            for e in s.step():
                events.setdefault(e.id, []).append(e)
    for id_, more in run_to_end(s).items():
        events.setdefault(id_, []).extend(more)
    assert all(text_of(events[f"r{i}"]) == "y" * n for i, n in enumerate(lengths))
    for batch in backend.batches:
        seqs = [seq for _, _, seq, _ in batch]
        assert seqs == sorted(seqs)


def test_a_free_slot_between_running_ones_gets_a_filler_that_leaves_its_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the sequence in a middle slot ends, the ones beside it would be two micro-batches
    (two passes over the weights) every step: a filler token (no logits) in the free slot
    keeps them one run. It goes after what the slot caches and is removed after the step,
    so the finished conversation's cells stay for its next turn, and the others' output is
    as without it."""
    answers: dict[str, str] = {}
    for fill in (True, False):
        backend = FakeBackend(parallel=4, batch_size=64, answer="y" * 12)
        s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
        s.fill_gaps = fill
        # The fake's steps take no time; keep the cost model's line (a pass 12 ms, a token 4).
        monkeypatch.setattr(s.drafts.costs, "observe", lambda *args: None)
        for i, n in enumerate([12, 3, 12]):  # slots 0, 1, 2; the middle one ends first
            s.submit(request(f"r{i}", chr(ord("a") + i) * 6, max_tokens=n))
        events = run_to_end(s)
        answers.update({f"{k} {fill}": text_of(v) for k, v in events.items()})
        middle = s.slots[1]
        assert backend.kv[1] == dict(enumerate(middle.cached))  # the filler went
        assert len(middle.cached) == 6 + 2  # the last token sampled is never decoded
        fillers = [e for b in backend.batches for e in b if e[2] == 1 and e[1] >= 6 and not e[3]]
        ended = next(i for i, b in enumerate(backend.batches) if (121, 7, 1, True) in b)
        late = [b for b in backend.batches[ended + 1 :] if {e[2] for e in b} >= {0, 2}]
        if fill:
            # every decode step after the middle slot's end: one filler at its cache's end
            assert late and all(len(b) == 3 and b[1][2] == 1 and not b[1][3] for b in late)
            assert {(tok, pos) for tok, pos, _, _ in fillers} == {(1, len(middle.cached))}
        else:
            assert all(len(b) == 2 for b in late) and not fillers
        assert s.stats().fillers == len(fillers)
    for i, n in enumerate([12, 3, 12]):
        assert answers[f"r{i} True"] == answers[f"r{i} False"] == "y" * n


def test_a_batch_without_room_is_retried_with_its_fillers_and_their_caches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama.cpp's "no room" (status 1) drops the caches of idle slots before the one retry;
    a slot with a filler in the batch keeps its cache, which the filler continues."""

    class Full(FakeBackend):
        refused = 0

        def decode(
            self, entries: list[tuple[int, int, int, bool]], embeddings: bool = False
        ) -> int:
            if not self.refused and any(not wants and pos >= 6 for _, pos, _, wants in entries):
                self.refused += 1
                return 1
            return super().decode(entries, embeddings)

    backend = Full(parallel=4, batch_size=64, answer="y" * 12)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    monkeypatch.setattr(s.drafts.costs, "observe", lambda *args: None)
    for i, n in enumerate([12, 3, 12, 2]):  # slot 3 ends first, then the middle slot 1
        s.submit(request(f"r{i}", chr(ord("a") + i) * 6, max_tokens=n))
    events = run_to_end(s)
    assert backend.refused == 1
    assert [text_of(events[f"r{i}"]) for i in range(4)] == ["y" * n for n in [12, 3, 12, 2]]
    assert len(s.slots[1].cached) == 8 and backend.kv[1] == dict(enumerate(s.slots[1].cached))
    assert s.slots[3].cached == [] and backend.kv[3] == {}  # idle, not in the batch: dropped


def test_no_filler_when_it_would_cost_more() -> None:
    """A hole as wide as the cost model prices above a pass is left open; a busy slot with
    no tokens this step ends a hole (a filler beside it would not join the runs)."""
    backend = FakeBackend(parallel=8)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    costs = s.drafts.costs
    a, b = costs.line()
    wide = int(a / b) + 1  # free slots whose rows cost more than the pass they spare
    steps = [(0, 1), (wide + 1, 1)]
    assert s.admission.gap_fillers(steps, costs, 64, 256) == []
    narrow = [(0, 1), (2, 1)]
    assert [slot.id for slot in s.admission.gap_fillers(narrow, costs, 64, 256)] == [1]
    assert s.admission.gap_fillers(narrow, costs, 0, 256) == []  # no room in the batch
    s.slots[1].cached = [5] * 256
    assert s.admission.gap_fillers(narrow, costs, 64, 256) == []  # no cell left in it


def test_embedding_is_read_in_small_chunks_apart_from_prompts_and_pooled_as_one() -> None:
    backend = FakeBackend(batch_size=64, answer="x" * 40)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("chat", "hi", max_tokens=30))
    first = s.step()  # the chat runs when the embed request arrives
    text = "".join(chr(65 + i % 26) for i in range(100))
    (started,) = s.submit(request("emb", text, embed=True))
    assert isinstance(started, Started) and started.prompt_tokens == 100
    s.submit(request("late", "a later prompt", max_tokens=2))
    events = run_to_end(s)
    (vector,) = [e for e in events["emb"] if isinstance(e, Embedding)]
    assert struct.unpack("<f", vector.vector)[0] == pytest.approx(sum(map(ord, text)) / 100)
    assert not any(isinstance(e, Delta) for e in events["emb"])
    assert text_of(first + events["chat"]) == "x" * 30 and text_of(events["late"]) == "xx"
    embed_slot = next(seq for _, _, seq, _ in backend.batches[1] if seq != 0)
    for batch, embeddings in zip(backend.batches, backend.embedding_steps, strict=True):
        read = [seq for _, _, seq, _ in batch if seq == embed_slot]
        if embeddings:
            assert 0 < len(read) <= 32
            # Besides the chunk, only one decode token per running sequence: no prompt.
            others = [seq for _, _, seq, _ in batch if seq != embed_slot]
            assert len(others) == len(set(others))
            assert all(wants for _, _, _, wants in batch)
        else:  # none of it, or one filler (no logits) keeping its neighbours one run
            assert len(read) <= 1
            assert not any(wants for _, _, seq, wants in batch if seq == embed_slot)
    assert backend.embedding_steps.count(True) == 4  # 100 tokens, 32 a step


def test_embedding_input_over_the_context_is_refused() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    (failed,) = s.submit(request("e", "123456789", embed=True))
    assert isinstance(failed, Failed) and failed.status == 400
    assert failed.code == "context_length_exceeded" and failed.param == "input"
    (started,) = s.submit(request("f", "12345678", embed=True))
    assert isinstance(started, Started)


def test_embedding_chunks_hold_the_logits_rows_to_about_32_mb() -> None:
    assert embed_chunk(49_152) == 160  # SmolLM2
    assert embed_chunk(262_144) == 32  # Gemma-3
    assert embed_chunk(151_936) == 32  # Qwen
    assert embed_chunk(32_000) == 256  # Llama 2


def test_cancelled_embedding_frees_its_slot_at_the_next_step() -> None:
    backend = FakeBackend(parallel=1)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("e", "E" * 100, embed=True))
    s.step()
    assert s.stats().running == 1
    s.cancel("e")
    s.submit(request("a", "hello"))
    events = run_to_end(s)
    assert "e" not in events and text_of(events["a"]) == "abc"


def test_encoder_only_model_reads_each_input_whole_and_refuses_generation() -> None:
    backend = FakeBackend(parallel=4, batch_size=64)  # a batch holds the longest input
    backend.encoder_only = True
    s = Scheduler(backend, ctx_per_seq=64, add_bos=False, bos=1)
    (failed,) = s.submit(request("chat", "hello"))
    assert isinstance(failed, Failed) and failed.status == 400 and failed.param == "model"
    for name, n in (("a", 20), ("b", 10), ("c", 40), ("d", 5)):
        s.submit(request(name, "x" * n, embed=True))
    events = run_to_end(s)
    assert all(any(isinstance(e, Embedding) for e in events[k]) for k in "abcd")
    # Whole inputs only, grouped up to the 32-token chunk, a longer one alone.
    assert [len(b) for b in backend.batches] == [30, 40, 5]
    assert all(backend.embedding_steps)
    assert all(not slot.cached for slot in s.slots)  # no KV cache to reuse
