"""Drafts without a second model: the tokens that followed the latest earlier occurrence of a
sequence's last few tokens, in its own prompt and output (prompt lookup decoding).

Office work repeats text the sequence already holds: an edited paragraph or function, a quoted
passage, a table rewritten as JSON, tool arguments echoing the question. Where the last n
tokens occurred before, what followed them then is a good guess for what follows now; the
batch step checks the guess (llmd/engine/scheduler.py), so a wrong one costs only the cells.

The longest match wins (up to `ngram_max` tokens; at least `ngram_min`), the latest among
equals; where the next latest match is as long (and at least AGREE_MIN), the draft stops
where what followed the two parts (a table's rows as JSON objects: the keys agree, each value
differs), so fewer draft tokens are refused (docs/benchmarks.md).

A match is found as LZ77 compressors find theirs: per slot, a table maps each `ngram_min`
tokens to the latest position they were followed at, and a chain links every position to the
one before it with the same `ngram_min` tokens. A lookup walks the chain from the latest
occurrence, measuring each match backward, until two reach `ngram_max` or CHAIN positions
were tried. That holds two machine integers per token (the index of every n-gram length that
llmd kept before took ~460 bytes per token at lengths 2-4 and ~2 KB at 2-12: docs/speculative
.md), so long matches cost no memory, and it grows by the tokens added since the last call.

Where the sequence's own tokens hold no match, the answers recently written for the same API
key are looked up the same way: a flow running one extraction over many documents, or staff
asking the same question, get answers much like the last ones. The pool is per key, so how
fast an answer comes never tells one key what another was answered.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import MutableSequence, Sequence

from llmd.engine.draft_protocol import DraftAsk

RECENT_TOKENS = 8192
"""Tokens of recent answers kept per key for lookups (the older half goes when full)."""
RECENT_KEYS = 32
"""Keys whose recent answers are kept, least recently answered out."""
CHAIN = 64
"""Earlier occurrences of the last `ngram_min` tokens a lookup measures at most, latest first
(zlib's default chain is 128 for a byte stream; tokens repeat far less often)."""
_GAP = -1
"""Between two answers in a pool: no real token, so no match spans two answers."""
AGREE_MIN = 5
"""The shortest match whose parting from the next latest one as long cuts a draft. Early in a
quote the latest of several two- to four-token matches is usually the passage being quoted
(cutting there cost Gemma-3 a third more steps on quoting); a JSON key repeated with a new
value in every object matches 5 tokens or more (docs/benchmarks.md)."""


BYTES_PER_TOKEN = 64
"""Memory one indexed token takes: its entries in the token and chain arrays (8 bytes), and a
share of the table's (one entry per distinct pair of tokens, ~100 bytes with its key and value
objects). Full pools of real text measured 51-52 bytes a token for prose, 58-61 for Python
code and 31 for JSON (tracemalloc, SmolLM2's and Gemma-3's tokens); text whose every pair of
tokens is new would take ~110."""


def index_bytes(slots: int, ctx_per_seq: int) -> int:
    """The memory the lookups' indexes take in a model process, for its estimate: every slot's
    sequence at full length and every key's pool full of real text (16 MiB for the pools)."""
    return (slots * ctx_per_seq + RECENT_KEYS * RECENT_TOKENS) * BYTES_PER_TOKEN


class _Index:
    """Tokens and their chains. `tokens` is a list for a slot (sharing the sequence's token
    objects) and an `array` for a pool (a copy that outlives the sequence)."""

    def __init__(self, tokens: MutableSequence[int]) -> None:
        self.tokens = tokens
        self.prev = array("i")
        """position -> the latest earlier position whose `ngram_min` tokens before it are the
        same, or -1; a position p is the token that followed tokens[p - ngram_min : p]."""
        self.head: dict[int, int] = {}
        """`ngram_min` tokens (packed) -> the latest position that followed them."""


class NgramDrafter:
    """The `Drafter` that looks drafts up in the sequence's own tokens, then in its key's
    recent answers."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.agree_min = AGREE_MIN
        """Matches shorter than this never cut a draft (bench.spec_inproc --agree 0 sets it
        past `ngram_max`, to measure what the cut gains)."""
        self._slots: dict[int, _Index] = {}
        self._recent: OrderedDict[str, _Index] = OrderedDict()

    def propose(self, asks: list[DraftAsk]) -> list[list[int]]:
        return [self._propose(ask) for ask in asks]

    def remember(self, tenant: str, answer: Sequence[int]) -> None:
        """An answer just ended: keep it in its key's pool of recent answers."""
        if not answer:
            return
        pool = self._recent.pop(tenant, None) or _Index(array("i"))
        self._recent[tenant] = pool
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)
        if len(pool.tokens) + 1 + len(answer) > RECENT_TOKENS:
            kept = [*pool.tokens, _GAP, *answer][-RECENT_TOKENS // 2 :]
            pool = self._recent[tenant] = _Index(array("i"))
            self._extend(pool, kept)
        else:
            self._extend(pool, [_GAP, *answer])

    def _propose(self, ask: DraftAsk) -> list[int]:
        tokens, k = ask.tokens, ask.k
        own = self._lookup(self._catch_up(ask.slot, tokens), tokens, k, own=True)
        if own is not None or ask.tenant not in self._recent:
            return own or []
        return self._lookup(self._recent[ask.tenant], tokens, k, own=False) or []

    @staticmethod
    def _key(gram: Sequence[int]) -> int:
        """`ngram_min` tokens packed into one int (exact: no two grams share a key)."""
        key = 0
        for t in gram:
            key = key << 32 | (t & 0xFFFFFFFF)
        return key

    def _lookup(self, index: _Index, tokens: Sequence[int], k: int, own: bool) -> list[int] | None:
        """The draft found in `index`, or None where nothing matched."""
        end = len(tokens)
        if end < self.ngram_min:
            return None
        start, second = self._match(index, tokens)
        if start < 0:
            return None
        if not own:  # what followed in an earlier answer, up to that answer's end
            draft = list(index.tokens[start : start + k])
            draft = draft[: draft.index(_GAP)] if _GAP in draft else draft
        else:
            draft = list(tokens[start : start + k])
            # A match less than k tokens back is a repeat of period end - start: the draft
            # goes on around it (a list, a table's rows, a loop).
            while len(draft) < k:
                draft.append(draft[len(draft) - (end - start)])
        if second >= 0:
            # The text went on in two ways after these tokens (a JSON key, then each object's
            # own value): past where the two part, the guess is likelier refused than kept,
            # and a refused draft token costs its share of the step for nothing. Cut only
            # where they differ: the next latest may run out first (a loop's draft goes on
            # around its period past the end of what is held).
            held = index.tokens
            for n in range(min(len(draft), len(held) - second)):
                if held[second + n] != draft[n]:
                    return draft[:n]
        return draft

    def _match(self, index: _Index, tokens: Sequence[int]) -> tuple[int, int]:
        """The position after the longest (then latest) earlier match of the end of `tokens`
        in `index`, or -1; and after the next latest match as long, or -1."""
        end, longest = len(tokens), self.ngram_max
        held, prev = index.tokens, index.prev
        pos = index.head.get(self._key(tokens[end - self.ngram_min : end]), -1)
        best, best_len, second = -1, self.ngram_min - 1, -1
        for _ in range(CHAIN):
            if pos < 0:
                break
            most = min(longest, pos, end)
            # A match counts only if it is longer than the best so far, or as long while no
            # second one is known, so its token `need - 1` back must agree first (as zlib
            # checks the byte at its best length before the rest).
            need = best_len + (second >= 0)
            if most >= need and (need == 0 or held[pos - need] == tokens[end - need]):
                n = 0
                while n < most and held[pos - 1 - n] == tokens[end - 1 - n]:
                    n += 1
                if n > best_len:
                    best, best_len, second = pos, n, -1
                elif n == best_len and second < 0:
                    second = pos
                    if n == longest:
                        break
            pos = prev[pos]
        return best, second if best_len >= self.agree_min else -1

    def _catch_up(self, slot: int, tokens: Sequence[int]) -> _Index:
        """The slot's index, extended to `tokens` (rebuilt if they are not a continuation
        of what it indexed: the slot went to another sequence)."""
        index = self._slots.get(slot)
        if index is None or tokens[: len(index.tokens)] != index.tokens:
            index = self._slots[slot] = _Index([])
        self._extend(index, tokens[len(index.tokens) :])
        return index

    def _extend(self, index: _Index, more: Sequence[int]) -> None:
        """Append `more` to the index's tokens and chain the positions that now have a known
        token after `ngram_min` real ones (the last `ngram_min` tokens are what the next
        lookup asks about; their follower is not known yet)."""
        held, prev, head, m = index.tokens, index.prev, index.head, self.ngram_min
        done = len(held)
        held.extend(more)
        prev.extend([-1] * len(more))
        for pos in range(max(done, m), len(held)):
            gram = held[pos - m : pos]
            if _GAP in gram:
                continue
            key = self._key(gram)
            prev[pos] = head.get(key, -1)
            head[key] = pos
