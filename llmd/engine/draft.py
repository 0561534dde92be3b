"""A draft model for speculative decoding (`[models.NAME] draft`): a smaller model of the same
vocabulary, loaded in the model's own process next to the main one, that proposes the tokens
likely to come next by greedy decoding; the scheduler checks them all in one step of the main
model (docs/speculative.md).

It has its own llama.cpp model and context, shaped like the main one (one KV stream per slot,
`ctx_per_seq` cells each), and keeps, per slot, the tokens its cells hold: each `propose`
decodes only what a sequence gained since the last one. It runs on the step loop's thread,
as the main model does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp as lc
import numpy as np

from llmd.engine.amx import extra_buffers_usable
from llmd.engine.context import context_params
from llmd.engine.draft_protocol import DraftAsk
from llmd.engine.messages import LoadOptions

_VOCAB_TYPES = {0: "none", 1: "SPM", 2: "BPE", 3: "WPM", 4: "UGM", 5: "RWKV", 6: "PLaMo-2"}

# llama.cpp's rule for a draft's vocabulary (common/speculative.cpp): sizes may differ a
# little (padding, a few added tokens), and the first ids are special tokens whose text
# varies between conversions of one tokenizer, so the text comparison starts after them.
MAX_VOCAB_DIFFERENCE = 128
FIRST_COMPARED_TOKEN = 5


class DraftError(Exception):
    """The draft model cannot serve (missing, not loadable, another vocabulary)."""


def _token_text(vocab: Any, token: int) -> bytes:
    return bytes(lc.llama_vocab_get_text(vocab, token) or b"")


def vocabulary_mismatch(main: Any, draft: Any) -> str | None:
    """Why tokens of `draft` (a llama_vocab) cannot stand for tokens of `main`; None if they
    can. The first differing token is named whenever there is one, to show what differs."""
    problems = []
    main_type, draft_type = int(lc.llama_vocab_type(main)), int(lc.llama_vocab_type(draft))
    if main_type != draft_type:
        problems.append(
            f"tokenizer types differ (model {_VOCAB_TYPES.get(main_type, main_type)}, "
            f"draft {_VOCAB_TYPES.get(draft_type, draft_type)})"
        )
    n_main, n_draft = int(lc.llama_vocab_n_tokens(main)), int(lc.llama_vocab_n_tokens(draft))
    if abs(n_main - n_draft) > MAX_VOCAB_DIFFERENCE:
        problems.append(
            f"sizes differ by more than {MAX_VOCAB_DIFFERENCE} (model {n_main}, draft {n_draft})"
        )
    for what, get in (
        ("BOS token", lc.llama_vocab_bos),
        ("EOS token", lc.llama_vocab_eos),
        ("adds BOS", lc.llama_vocab_get_add_bos),
        ("adds EOS", lc.llama_vocab_get_add_eos),
    ):
        a, b = int(get(main)), int(get(draft))
        if a != b:
            problems.append(f"{what} differs (model {a}, draft {b})")
    for token in range(FIRST_COMPARED_TOKEN, min(n_main, n_draft)):
        a_text, b_text = _token_text(main, token), _token_text(draft, token)
        if a_text != b_text:
            problems.append(f"token {token} is {a_text!r} in the model, {b_text!r} in the draft")
            break
    return "; ".join(problems) or None


class DraftModel:
    """The draft model and its context; implements `Drafter` (llmd/engine/draft_protocol.py)."""

    def __init__(self, options: LoadOptions, main_vocab: Any, cpu_features: list[str]) -> None:
        path = options.draft_path
        assert path is not None
        if not path.is_file():
            raise DraftError(f"draft model file not found: {path}")
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = extra_buffers_usable(path, cpu_features)
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise DraftError(f"llama.cpp could not load the draft model {path} (not GGUF?)")
        self.ctx: Any = None
        self.batch: Any = None
        try:
            self._setup(options, main_vocab)
        except BaseException:
            self.close()
            raise

    def _setup(self, options: LoadOptions, main_vocab: Any) -> None:
        path = options.draft_path
        vocab = lc.llama_model_get_vocab(self.model)
        if problem := vocabulary_mismatch(main_vocab, vocab):
            raise DraftError(
                f"draft model {path} does not share the vocabulary of {options.path}: {problem}"
            )
        # Drafted ids must be tokens of both models.
        self.n_vocab = min(
            int(lc.llama_vocab_n_tokens(vocab)), int(lc.llama_vocab_n_tokens(main_vocab))
        )
        self.vocab = vocab
        self.ctx_per_seq = options.ctx_per_seq
        self.batch_size = options.batch_size
        # Shaped as the main model's context, for the same reasons.
        ctx_params = context_params(options)
        self.ctx = lc.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            raise DraftError(f"llama.cpp could not create a context for the draft model {path}")
        self.memory = lc.llama_get_memory(self.ctx)
        if not self.memory:
            raise DraftError(f"the draft model {path} has no KV cache (an embedding model?)")
        self.batch = lc.llama_batch_init(options.batch_size, 0, 1)
        self._logits_row = ctypes.c_float * int(lc.llama_vocab_n_tokens(vocab))
        self.held: dict[int, list[int]] = {}
        """Per slot, the tokens its cells hold, in position order."""

    def close(self) -> None:
        if self.batch is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None

    # -- Drafter ---------------------------------------------------------------------------

    def forget(self, slot: int) -> None:
        lc.llama_memory_seq_rm(self.memory, slot, -1, -1)
        self.held.pop(slot, None)

    def propose(self, asks: list[DraftAsk]) -> list[list[int]]:
        """Greedy drafts (one ask per slot): first each slot's cells are brought up to its
        tokens (one batch for all, in chunks of the batch size), the last token with logits;
        then one batched step per further drafted token. The drafts' cells stay (with `held`
        saying so): tokens the main model accepts need no decoding next time, the others are
        cut then."""
        drafts: list[list[int]] = [[] for _ in asks]
        want = [min(a.k, self.ctx_per_seq - len(a.tokens) + 1) for a in asks]
        going = [i for i, a in enumerate(asks) if want[i] > 0 and a.tokens]
        entries: list[tuple[int, int, int, int]] = []  # (token, pos, slot, ask or -1)
        for i in going:
            slot, tokens = asks[i].slot, asks[i].tokens
            start = self._cut(slot, tokens)
            last = len(tokens) - 1
            entries += [
                (tokens[p], p, slot, i if p == last else -1) for p in range(start, last + 1)
            ]
            self.held[slot] += tokens[start:]
        while going:
            picked = self._run(entries)
            if picked is None:  # no room in the KV cache (or worse): these slots start over
                for i in going:
                    self.forget(asks[i].slot)
                break
            for i, token in picked.items():
                drafts[i].append(token)
            going = [i for i in going if self._goes_on(drafts[i], want[i])]
            entries = []
            for i in going:
                ask, token = asks[i], drafts[i][-1]
                entries.append((token, len(ask.tokens) + len(drafts[i]) - 1, ask.slot, i))
                self.held[ask.slot].append(token)
        return drafts

    def _run(self, entries: list[tuple[int, int, int, int]]) -> dict[int, int] | None:
        """Decode `entries` in batches; each ask's pick at its entry with logits (None if
        llama.cpp refused a batch)."""
        picked = {}
        for first in range(0, len(entries), self.batch_size):
            chunk = entries[first : first + self.batch_size]
            if not self._decode(chunk):
                return None
            for row, (_, _, _, i) in enumerate(chunk):
                if i >= 0:
                    picked[i] = self._pick(row)
        return picked

    def _cut(self, slot: int, tokens: Sequence[int]) -> int:
        """Remove the slot's cells past what it shares with `tokens` (and the last token's,
        whose logits are wanted again); the position decoding starts from."""
        held = self.held.setdefault(slot, [])
        same = 0
        limit = min(len(held), len(tokens) - 1)
        while same < limit and held[same] == tokens[same]:
            same += 1
        if same < len(held):
            if not lc.llama_memory_seq_rm(self.memory, slot, same, -1):
                # A model whose memory cannot be cut in the middle (recurrent): start over.
                lc.llama_memory_seq_rm(self.memory, slot, -1, -1)
                same = 0
            del held[same:]
        return same

    def _goes_on(self, draft: list[int], want: int) -> bool:
        return len(draft) < want and not lc.llama_vocab_is_eog(self.vocab, draft[-1])

    def _decode(self, entries: list[tuple[int, int, int, int]]) -> bool:
        batch = self.batch
        for row, (token, pos, slot, ask) in enumerate(entries):
            batch.token[row] = token
            batch.pos[row] = pos
            batch.n_seq_id[row] = 1
            batch.seq_id[row][0] = slot
            batch.logits[row] = ask >= 0
        batch.n_tokens = len(entries)
        return int(lc.llama_decode(self.ctx, batch)) == 0

    def _pick(self, row: int) -> int:
        """The likeliest token at output `row` of the last decode, among both models' ids;
        the first of equal maxima, as llama.cpp's greedy sampler picks."""
        address = ctypes.cast(lc.llama_get_logits_ith(self.ctx, row), ctypes.c_void_p).value
        if not address:
            raise RuntimeError(f"llama.cpp has no draft logits for batch entry {row}")
        logits = np.frombuffer(memoryview(self._logits_row.from_address(address)), np.float32)
        return int(logits[: self.n_vocab].argmax())
