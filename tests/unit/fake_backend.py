"""A fake llama.cpp backend with the real one's contract (llmd/engine/backend.py), for the
scheduler and admission tests: tokens are characters, the KV cache a dict per slot, and a token's
"hidden state" its code. Plus the helpers that submit a request and run the scheduler dry."""

from __future__ import annotations

import struct
from typing import Any

from llmd.engine.messages import Delta, GenerateRequest, Grammar, SamplingParams
from llmd.engine.scheduler import Scheduler
from llmd.sampling import resolve

EOS = 0


class FakeBackend:
    """Tokens are characters (ord); the 'model' always answers the next letter, then EOS."""

    def __init__(self, parallel: int = 4, batch_size: int = 32, answer: str = "abc") -> None:
        self.n_parallel = parallel
        self.batch_size = batch_size
        self.ubatch_size = batch_size
        self.n_vocab = 1 << 20  # embedding chunks of 32 tokens
        self.encoder_only = False
        self.answer = answer
        self.kv: dict[int, dict[int, int]] = {i: {} for i in range(parallel)}
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.embedding_steps: list[bool] = []
        self.tokenized: list[tuple[str, bool]] = []
        """(text, special tokens parsed) of each tokenize call."""
        self._outputs: dict[int, int] = {}

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        self.tokenized.append((text, parse_special))
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


def request(id_: str, prompt: str, max_tokens: int | None = None, **kw: Any) -> GenerateRequest:
    """A request for `prompt` with the built-in sampling (and `max_tokens`, if given)."""
    return GenerateRequest(id_, prompt, resolve(max_tokens=max_tokens), **kw)


def run_to_end(s: Scheduler) -> dict[str, list[Any]]:
    """Step `s` until it has no work left; the events of each request, by request id."""
    events: dict[str, list[Any]] = {}
    for _ in range(1000):
        if not s.has_work():
            break
        for e in s.step():
            events.setdefault(e.id, []).append(e)
    return events


def text_of(events: list[Any], index: int = 0) -> str:
    """The text the deltas of choice `index` carry."""
    return "".join(e.text for e in events if isinstance(e, Delta) and e.index == index)
