"""What the scheduler asks of a drafter (speculative decoding): the tokens likely to follow a
sequence, which one batch step then checks. Two drafters implement it: n-gram lookup over the
sequence's own tokens (`llmd/engine/ngram.py`) and a small draft model in the same process
(`llmd/engine/draft.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass
class DraftAsk:
    """One sequence's request for a draft."""

    slot: int
    """The sequence's slot (llama.cpp sequence id): a draft model keeps its own KV cells there."""
    tokens: Sequence[int]
    """Every token of the sequence so far, prompt and output; the last one is the token this
    step decodes (not yet in the KV cache). Read only."""
    k: int
    """Most tokens wanted; fewer (or none) is fine."""
    tenant: str = ""
    """Who asked (API key name): n-gram lookup also reads that key's recent answers."""


class Drafter(Protocol):
    def propose(self, asks: list[DraftAsk]) -> list[list[int]]:
        """For each ask, up to `k` tokens expected after `tokens`, in order."""
        ...
