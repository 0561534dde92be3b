"""The scheduler's state: slots (llama.cpp sequence ids) and their cached tokens, the requests
and sequences bound to them while they run, and the pieces a step is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmd.engine.backend import Entry
from llmd.engine.messages import GenerateRequest
from llmd.engine.speculate import Acceptance
from llmd.engine.text import TextStream


@dataclass
class Slot:
    id: int
    cached: list[int] = field(default_factory=list)
    """Tokens whose KV cells this slot holds, at positions 0..len-1."""
    last_used: float = 0.0
    seq: Sequence | None = None


@dataclass
class Sequence:
    """One choice of one request, bound to a slot while it runs."""

    request: RequestState
    index: int
    slot: Slot
    sampler: Any
    text: TextStream
    pending: int | None = None
    """The token sampled last step, to be decoded (put in the KV cache) this step."""
    generated: int = 0
    done: bool = False
    acceptance: Acceptance = field(default_factory=Acceptance)
    """How often this sequence's drafts were confirmed (speculative decoding)."""
    shadow: int | None = None
    """The first token of last step's draft, not put into the step: checked against the token
    that came, to keep `acceptance` measured while the sequence does not draft."""


@dataclass
class RequestState:
    req: GenerateRequest
    prompt: list[int]
    max_tokens: int
    seqs: list[Sequence] = field(default_factory=list)
    n_prefilled: int = 0
    """Prompt tokens in the leader's KV cells; all choices sample once it reaches the end."""
    pooled: Any = None
    """An embed request's hidden states pooled so far (the backend's `embed_rows`)."""

    @property
    def is_prefilling(self) -> bool:
        return self.n_prefilled < len(self.prompt)


@dataclass
class Piece:
    """One slot's tokens for a step: the sequences that sample from its last token, or the
    embed request whose input it reads."""

    slot: int
    chunk: list[Entry]
    samplers: list[Sequence]
    embed: RequestState | None = None
    draft: list[int] | None = None
    """Draft tokens after the sampled-from token (the chunk's last entries), to verify."""
    pad: int = 0
    """Rows after the chunk's real ones that only shape the step (batch_invariant): no
    output, their cells dropped after the step."""
    guess: bool = False
    """The draft is one guessed token that only shapes the step (batch_invariant)."""
    decode: bool = False
    """The sampler's pending token (and its draft), not a chunk of a prompt."""
