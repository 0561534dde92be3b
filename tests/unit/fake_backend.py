"""Scheduler unit tests on a fake backend (the real one is covered through the daemon)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from llmd.engine.messages import (
    Admitted,
    Delta,
    Embedding,
    Failed,
    GenerateRequest,
    Grammar,
    SamplingParams,
    Started,
)
from llmd.engine.scheduler import Scheduler, embed_chunk
from llmd.engine.text import TextStream
from llmd.sampling import resolve

EOS = 0


class FakeBackend:
    """Tokens are characters (ord); the 'model' always answers the next letter, then EOS."""

    def __init__(self, parallel: int = 4, batch_size: int = 32, answer: str = "abc") -> None:
        self.n_parallel = parallel
        self.batch_size = batch_size
        self.n_vocab = 1 << 20  # embedding chunks of 32 tokens
        self.encoder_only = False
        self.answer = answer
        self.kv: dict[int, dict[int, int]] = {i: {} for i in range(parallel)}
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.embedding_steps: list[bool] = []
        self._outputs: dict[int, int] = {}

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return [ord(c) for c in text]

    def token_bytes(self, token: int) -> bytes:
        return chr(token).encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def decode(self, entries: list[tuple[int, int, int, bool]], embeddings: bool = False) -> int:
        self.batches.append(list(entries))
        self.embedding_steps.append(embeddings)
        for i, (tok, pos, seq, wants) in enumerate(entries):
            assert pos == len(self.kv[seq]), "positions must continue the sequence"
            self.kv[seq][pos] = tok
            if wants:
                self._outputs[i] = seq
        return 0

    def compile_grammar(self, grammar: Grammar) -> str | None:
        if grammar.source == "bad":
            return "cannot be followed"
        grammar.gbnf = "compiled"
        return None

    def new_sampler(self, params: SamplingParams, seed: int) -> Any:
        return {"n": 0}

    def sample(self, sampler: Any, index: int) -> int:
        n = sampler["n"]
        sampler["n"] += 1
        return ord(self.answer[n]) if n < len(self.answer) else EOS

    def free_sampler(self, sampler: Any) -> None:
        sampler["freed"] = True

    def logprobs(self, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        return -0.5, [(token, -0.5)][:top]

    def seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        cells = self.kv[seq]
        lo = 0 if p0 < 0 else p0
        for pos in [p for p in cells if p >= lo and (p1 < 0 or p < p1)]:
            del cells[pos]
        return True

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        lo = 0 if p0 < 0 else p0
        for pos, tok in self.kv[src].items():
            if pos >= lo and (p1 < 0 or pos < p1):
                self.kv[dst][pos] = tok

    # A token's "hidden state" is its code; mean pooling gives the mean code of the input.
    def embed_rows(self, pooled: Any, start: int, count: int, first: bool) -> Any:
        assert self.embedding_steps[-1], "hidden states exist only in an embeddings step"
        rows = self.batches[-1][start : start + count]
        return (pooled or 0) + sum(tok for tok, _, _, _ in rows)

    def embedding(self, pooled: Any, n_tokens: int) -> bytes:
        return struct.pack("<f", pooled / n_tokens)


def _req(id_: str, prompt: str, max_tokens: int | None = None, **kw: Any) -> GenerateRequest:
    return GenerateRequest(id_, prompt, resolve(max_tokens=max_tokens), **kw)


def _run(s: Scheduler) -> dict[str, list[Any]]:
    events: dict[str, list[Any]] = {}
    for _ in range(1000):
        if not s.has_work():
            break
        for e in s.step():
            events.setdefault(e.id, []).append(e)
    return events


def _text(events: list[Any], index: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta) and e.index == index)


def test_generates_until_eos_and_counts_tokens() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    assert isinstance(s.submit(_req("a", "hello"))[0], Started)
    events = _run(s)["a"]
    assert _text(events) == "abc"
    deltas = [e for e in events if isinstance(e, Delta)]
    assert sum(d.tokens for d in deltas) == 4  # a, b, c and the EOS
    assert deltas[-1].finish_reason == "stop"


def test_max_tokens_gives_length() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=64, add_bos=False, bos=1)
    s.submit(_req("a", "hello", max_tokens=2))
    events = _run(s)["a"]
    assert _text(events) == "ab"
    assert [e.finish_reason for e in events if isinstance(e, Delta)][-1] == "length"


def test_context_overflow_is_refused_with_numbers() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    (failed,) = s.submit(_req("a", "hello", max_tokens=10))
    assert isinstance(failed, Failed) and failed.status == 400
    assert failed.code == "context_length_exceeded" and "8 tokens" in failed.message
    assert "15" in failed.message
    (started,) = s.submit(_req("b", "hello"))
    assert isinstance(started, Started) and started.max_tokens == 3


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
    s.submit(_req("free", "hello", max_tokens=6, ignore_eos=True))
    held = resolve(grammar=Grammar("json_object"), max_tokens=6)
    s.submit(GenerateRequest("held", "hello", held, ignore_eos=True))
    events = _run(s)
    finishes = {
        k: [e.finish_reason for e in v if isinstance(e, Delta)][-1] for k, v in events.items()
    }
    assert finishes == {"free": "length", "held": "stop"}
    assert _text(events["held"]) == "abc"


def test_chunked_prefill_never_exceeds_the_batch_and_keeps_decoding() -> None:
    backend = FakeBackend(batch_size=8, answer="x" * 30)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("short", "hi", max_tokens=20))
    s.step()
    s.step()
    s.submit(_req("long", "y" * 100, max_tokens=2))
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


def test_prefix_is_reused_from_a_finished_sequence() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(_req("one", system + "first question"))
    _run(s)
    s.submit(_req("two", system + "second question"))
    events = _run(s)["two"]
    admitted = next(e for e in events if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    assert _text(events) == "abc"


def test_prefix_is_copied_from_a_running_sequence() -> None:
    backend = FakeBackend(batch_size=128, answer="z" * 50)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(_req("one", system + "first", max_tokens=40))
    s.step()  # prompt done, "one" now decoding in its slot
    s.submit(_req("two", system + "second", max_tokens=2))
    events = _run(s)
    admitted = next(e for e in events["two"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    two_slot = next(
        slot for slot in s.slots if slot.cached[:86] == [ord(c) for c in system + "second"]
    )
    assert backend.kv[two_slot.id][0] == ord("S")


def test_n_choices_share_the_prompt() -> None:
    backend = FakeBackend()
    s = Scheduler(backend, ctx_per_seq=64, add_bos=False, bos=1)
    s.submit(_req("a", "prompt", n=3))
    events = _run(s)["a"]
    assert [_text(events, i) for i in range(3)] == ["abc", "abc", "abc"]
    prompt_tokens_decoded = sum(1 for b in backend.batches for e in b if e[1] < len("prompt"))
    assert prompt_tokens_decoded == len("prompt")  # read once, not three times


def test_cancel_frees_the_slot_at_the_next_step() -> None:
    s = Scheduler(FakeBackend(parallel=1, answer="q" * 100), ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("a", "hello", max_tokens=90))
    s.submit(_req("b", "world", max_tokens=2))
    s.step()
    assert s.stats().running == 1 and s.stats().waiting == 1
    s.cancel("a")
    events = _run(s)
    assert _text(events["b"]) == "qq"
    assert all(slot.seq is None for slot in s.slots)


def test_stop_string_spanning_tokens_is_never_sent() -> None:
    stream = TextStream(["STOP here"])
    out = "".join(stream.push(p.encode()) for p in ["abc ", "ST", "OP", " he", "re tail"])
    assert out == "abc "
    assert stream.stopped


def test_false_stop_prefix_is_released() -> None:
    stream = TextStream(["STOP"])
    parts = [stream.push(p.encode()) for p in ["ab", "ST", "Ox", "yz"]]
    assert parts == ["ab", "", "STOx", "yz"]
    assert stream.flush() == ""


def test_utf8_split_across_tokens() -> None:
    stream = TextStream([])
    data = "é€".encode()
    parts = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(parts) + stream.flush() == "é€"
    assert parts[0] == ""


def test_short_common_prefix_is_copied_and_the_donor_keeps_its_history() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=256, add_bos=False, bos=1)
    first = [ord(c) for c in "T" * 20 + "first question"]
    s.submit(_req("one", "T" * 20 + "first question"))
    _run(s)
    s.submit(_req("two", "T" * 20 + "second question"))
    admitted = next(e for e in _run(s)["two"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 20  # a chat template's preamble, say
    assert any(slot.cached[: len(first)] == first for slot in s.slots)
    s.submit(_req("three", "T" * 10 + "third question"))
    admitted = next(e for e in _run(s)["three"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 0  # too short to be worth a copy


def test_prompts_arriving_together_are_read_one_per_step() -> None:
    backend = FakeBackend(batch_size=256, answer="x" * 5)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("a", "A" * 40))
    s.submit(_req("b", "B" * 40))
    s.submit(_req("tiny1", "c" * 3))
    s.submit(_req("tiny2", "d" * 3))
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
            s.submit(_req(f"r{i}", chr(ord("a") + i) * (5 + i), max_tokens=n))
        for _ in range(6):
            for e in s.step():
                events.setdefault(e.id, []).append(e)
    for id_, more in _run(s).items():
        events.setdefault(id_, []).extend(more)
    assert all(_text(events[f"r{i}"]) == "y" * n for i, n in enumerate(lengths))
    for batch in backend.batches:
        seqs = [seq for _, _, seq, _ in batch]
        assert seqs == sorted(seqs)


def test_new_sequences_keep_running_slots_together() -> None:
    backend = FakeBackend(parallel=4, batch_size=256, answer="z" * 50)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(_req("a", "A" * 10, max_tokens=40))
    s.submit(_req("b", "B" * 10, max_tokens=40))
    s.submit(_req("c", "C" * 10, max_tokens=2))
    s.submit(_req("conv", system + "first", max_tokens=2))
    for _ in range(8):
        s.step()
    assert [slot.seq is not None for slot in s.slots] == [True, True, False, False]
    assert s.slots[3].cached[:80] == [ord("S")] * 80  # the conversation's history, in slot 3
    # The conversation returns: its history is copied next to the running slots (slot 2)
    # instead of being decoded in slot 3, which would leave a gap at slot 2.
    s.submit(_req("conv2", system + "second", max_tokens=2))
    admitted = next(e for e in s.step() if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    assert {seq for _, pos, seq, _ in backend.batches[-1] if pos >= 80} == {2}
    assert backend.kv[2][0] == ord("S")


def test_a_burst_of_new_prompts_does_not_wipe_a_returning_conversation() -> None:
    s = Scheduler(FakeBackend(parallel=4), ctx_per_seq=256, add_bos=False, bos=1)
    history = "H" * 70 + "first turn"
    s.submit(_req("conv", history))
    _run(s)  # the conversation's history is the least recently used cache now
    for i in range(3):
        s.submit(_req(f"old{i}", chr(ord("p") + i) * 30))
    _run(s)
    # Everything arrives at once, the returning conversation last: the new prompts, placed
    # first in arrival order, would take its slot (the least recently used) and wipe it.
    for i in range(3):
        s.submit(_req(f"new{i}", chr(ord("u") + i) * 30))
    s.submit(_req("conv2", history + "abc" + "second turn"))
    events = _run(s)
    admitted = next(e for e in events["conv2"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(history) + 3
    assert all(_text(events[f"new{i}"]) == "abc" for i in range(3))


def test_placing_side_by_side_still_evicts_the_least_recently_used_cache() -> None:
    backend = FakeBackend(parallel=3, answer="z" * 60)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("x", "X" * 70, max_tokens=3))
    _run(s)  # slot 0: the older history
    s.submit(_req("y", "Y" * 70, max_tokens=3))
    _run(s)  # slot 1: the more recent one
    s.submit(_req("a", "A" * 20, max_tokens=50))
    s.step()  # "a" runs in slot 2
    # "b" goes next to "a", into slot 1; y's history must survive it, x's is the one to go.
    s.submit(_req("b", "B" * 20, max_tokens=50))
    s.step()
    assert s.slots[1].seq is not None and s.slots[1].seq.request.req.id == "b"
    s.cancel("a")
    s.cancel("b")
    s.step()
    s.submit(_req("y2", "Y" * 70 + "zzz" + "next turn", max_tokens=1))
    admitted = next(e for e in _run(s)["y2"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 72  # 70 + two z's: the last one sampled is never decoded
    s.submit(_req("x2", "X" * 70 + "zzz" + "next turn", max_tokens=1))
    assert next(e for e in _run(s)["x2"] if isinstance(e, Admitted)).cached_tokens == 0


def test_embedding_is_read_in_small_chunks_apart_from_prompts_and_pooled_as_one() -> None:
    backend = FakeBackend(batch_size=64, answer="x" * 40)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("chat", "hi", max_tokens=30))
    first = s.step()  # the chat runs when the embed request arrives
    text = "".join(chr(65 + i % 26) for i in range(100))
    (started,) = s.submit(_req("emb", text, embed=True))
    assert isinstance(started, Started) and started.prompt_tokens == 100
    s.submit(_req("late", "a later prompt", max_tokens=2))
    events = _run(s)
    (vector,) = [e for e in events["emb"] if isinstance(e, Embedding)]
    assert struct.unpack("<f", vector.vector)[0] == pytest.approx(sum(map(ord, text)) / 100)
    assert not any(isinstance(e, Delta) for e in events["emb"])
    assert _text(first + events["chat"]) == "x" * 30 and _text(events["late"]) == "xx"
    embed_slot = next(seq for _, _, seq, _ in backend.batches[1] if seq != 0)
    for batch, embeddings in zip(backend.batches, backend.embedding_steps, strict=True):
        read = [seq for _, _, seq, _ in batch if seq == embed_slot]
        if embeddings:
            assert 0 < len(read) <= 32
            # Besides the chunk, only one decode token per running sequence: no prompt.
            others = [seq for _, _, seq, _ in batch if seq != embed_slot]
            assert len(others) == len(set(others))
            assert all(wants for _, _, _, wants in batch)
        else:
            assert not read
    assert backend.embedding_steps.count(True) == 4  # 100 tokens, 32 a step


def test_embedding_input_over_the_context_is_refused() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=8, add_bos=False, bos=1)
    (failed,) = s.submit(_req("e", "123456789", embed=True))
    assert isinstance(failed, Failed) and failed.status == 400
    assert failed.code == "context_length_exceeded" and failed.param == "input"
    (started,) = s.submit(_req("f", "12345678", embed=True))
    assert isinstance(started, Started)


def test_embedding_reuses_no_cached_prefix_but_leaves_its_own() -> None:
    backend = FakeBackend()
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    text = "S" * 80
    s.submit(_req("a", text + "?", max_tokens=1))
    _run(s)
    s.submit(_req("e", text + "!", embed=True))
    events = _run(s)["e"]
    assert [e.cached_tokens for e in events if isinstance(e, Admitted)] == [0]
    # Every hidden state was computed: the whole input went through an embeddings step.
    read = sum(
        1 for b, e in zip(backend.batches, backend.embedding_steps, strict=True) if e for _ in b
    )
    assert read == 81
    s.submit(_req("b", text + "! and more", max_tokens=1))
    assert [e.cached_tokens for e in _run(s)["b"] if isinstance(e, Admitted)] == [81]


def test_embedding_chunks_hold_the_logits_rows_to_about_32_mb() -> None:
    assert embed_chunk(49_152) == 160  # SmolLM2
    assert embed_chunk(262_144) == 32  # Gemma-3
    assert embed_chunk(151_936) == 32  # Qwen
    assert embed_chunk(32_000) == 256  # Llama 2


def test_cancelled_embedding_frees_its_slot_at_the_next_step() -> None:
    backend = FakeBackend(parallel=1)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(_req("e", "E" * 100, embed=True))
    s.step()
    assert s.stats().running == 1
    s.cancel("e")
    s.submit(_req("a", "hello"))
    events = _run(s)
    assert "e" not in events and _text(events["a"]) == "abc"


def test_encoder_only_model_reads_each_input_whole_and_refuses_generation() -> None:
    backend = FakeBackend(parallel=4, batch_size=64)  # a batch holds the longest input
    backend.encoder_only = True
    s = Scheduler(backend, ctx_per_seq=64, add_bos=False, bos=1)
    (failed,) = s.submit(_req("chat", "hello"))
    assert isinstance(failed, Failed) and failed.status == 400 and failed.param == "model"
    for name, n in (("a", 20), ("b", 10), ("c", 40), ("d", 5)):
        s.submit(_req(name, "x" * n, embed=True))
    events = _run(s)
    assert all(any(isinstance(e, Embedding) for e in events[k]) for k in "abcd")
    # Whole inputs only, grouped up to the 32-token chunk, a longer one alone.
    assert [len(b) for b in backend.batches] == [30, 40, 5]
    assert all(backend.embedding_steps)
    assert all(not slot.cached for slot in s.slots)  # no KV cache to reuse
