"""Drafts without a second model: the tokens that followed the latest earlier occurrence of a
sequence's last few tokens, in its own prompt and output (prompt lookup decoding).

Office work repeats text the sequence already holds: an edited paragraph or function, a quoted
passage, a table rewritten as JSON, tool arguments echoing the question. Where the last n
tokens occurred before, what followed them then is a good guess for what follows now; the
batch step checks the guess (llmd/engine/scheduler.py), so a wrong one costs only the cells.

Per slot, an index maps each n-gram (n from `ngram_min` to `ngram_max`) to the position after
its latest occurrence. It grows by the tokens added since the last call, so a step costs a
few dictionary operations per new token, not a scan of the history.

Where the sequence's own tokens hold no match, the answers recently written for the same API
key are looked up the same way: a flow running one extraction over many documents, or staff
asking the same question, get answers much like the last ones. The pool is per key, so how
fast an answer comes never tells one key what another was answered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmd.engine.draft_protocol import DraftAsk

RECENT_TOKENS = 8192
"""Tokens of recent answers kept per key for lookups (the older half goes when full)."""
RECENT_KEYS = 32
"""Keys whose recent answers are kept, least recently answered out."""
_GAP = -1
"""Between two answers in a pool: no real token, so no n-gram spans two answers."""


@dataclass
class _Index:
    tokens: list[int] = field(default_factory=list)
    """The tokens indexed: every n-gram ending before the last of them has its entry."""
    after: dict[tuple[int, ...], int] = field(default_factory=dict)
    """n-gram -> the position just after its latest indexed occurrence."""


class NgramDrafter:
    """The `Drafter` that looks drafts up in the sequence's own tokens, then in its key's
    recent answers."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.sizes = range(ngram_max, ngram_min - 1, -1)  # longest first
        self._slots: dict[int, _Index] = {}
        self._recent: OrderedDict[str, _Index] = OrderedDict()

    def propose(self, asks: list[DraftAsk]) -> list[list[int]]:
        return [self._propose(ask) for ask in asks]

    def remember(self, tenant: str, answer: Sequence[int]) -> None:
        """An answer just ended: keep it in its key's pool of recent answers."""
        if not answer:
            return
        pool = self._recent.pop(tenant, None) or _Index()
        self._recent[tenant] = pool
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)
        tokens = [*pool.tokens, _GAP, *answer]
        if len(tokens) > RECENT_TOKENS:
            pool = self._recent[tenant] = _Index()
            tokens = tokens[-RECENT_TOKENS // 2 :]
        self._extend(pool, tokens)

    def _propose(self, ask: DraftAsk) -> list[int]:
        tokens, k = ask.tokens, ask.k
        own = self._lookup(self._catch_up(ask.slot, tokens), tokens, k, own=True)
        if own or ask.tenant not in self._recent:
            return own
        return self._lookup(self._recent[ask.tenant], tokens, k, own=False)

    def _lookup(self, index: _Index, tokens: Sequence[int], k: int, own: bool) -> list[int]:
        end = len(tokens)
        for n in self.sizes:
            if end <= n:
                continue
            start = index.after.get(tuple(tokens[end - n : end]))
            if start is None:
                continue
            if not own:  # what followed in an earlier answer, up to that answer's end
                draft = index.tokens[start : start + k]
                return draft[: draft.index(_GAP)] if _GAP in draft else draft
            draft = list(tokens[start : start + k])
            # A match less than k tokens back is a repeat of period end - start: the draft
            # goes on around it (a list, a table's rows, a loop).
            while len(draft) < k:
                draft.append(draft[len(draft) - (end - start)])
            return draft
        return []

    def _catch_up(self, slot: int, tokens: Sequence[int]) -> _Index:
        """The slot's index, extended to `tokens` (rebuilt if they are not a continuation
        of what it indexed: the slot went to another sequence)."""
        index = self._slots.get(slot)
        if index is None or tokens[: len(index.tokens)] != index.tokens:
            index = self._slots[slot] = _Index()
        self._extend(index, tokens)
        return index

    def _extend(self, index: _Index, tokens: Sequence[int]) -> None:
        """Index the tokens past those `index` holds (`tokens` continues them)."""
        done, end = len(index.tokens), len(tokens)
        # Positions p with a known next token (p < end - 1) are keyed by the n-gram ending
        # there; the n-gram ending at the last token is what the next lookup asks about.
        after = index.after
        for p in range(max(done - 1, 0), end - 1):
            for n in self.sizes:
                if p + 1 >= n:
                    after[tuple(tokens[p + 1 - n : p + 1])] = p + 1
        index.tokens.extend(tokens[done:end])
