"""Continuous batching: what each engine step decodes, and what it produced.

A fixed set of slots (llama.cpp sequence ids) holds sequences. Every step decodes one token
for each running sequence plus a bounded chunk of pending prompt tokens (chunked prefill), so
a long prompt never freezes the streams already running. Requests join at the next step and
leave when done. A finished sequence's KV cells stay in its slot until the slot is needed,
least recently used first, so a returning conversation or a shared system prompt is found
again (prefix reuse) instead of recomputed.

The scheduler knows nothing of llama.cpp: it drives a `Backend`, which tests replace.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmd.engine.messages import (
    Admitted,
    Delta,
    Embedding,
    Failed,
    GenerateRequest,
    Grammar,
    SamplingParams,
    Started,
    Stats,
    TokenLogprob,
    TopLogprob,
)
from llmd.engine.text import TextStream

# A cached prefix shorter than this is not reused: copying it costs about as much as reading
# it. A chat template's preamble (24 tokens for SmolLM2) is worth it: ~80 ms of prompt
# reading against ~5 ms for a copy (docs/benchmarks.md).
MIN_SHARED_PREFIX = 16

# A free slot's history is cut down to a shared prefix in place only when the prefix is at
# least this long or is all of it; a shorter one is copied, so reusing a chat template's
# preamble never costs another conversation its history.
MIN_IN_PLACE_PREFIX = 64

# A cache shorter than this is not moved out of the way to survive eviction (`_evict`): a
# copy takes the whole KV stream (~5 ms for SmolLM2 at 2,048 cells, more for larger models),
# too much for what is mostly a chat template's preamble, found in many slots anyway.
MIN_KEPT_CACHE = 64

# Prompts are read first come, first served, one per step: once a step holds a finished
# prompt of at least this many tokens, later prompts wait for the next step. Short prompts are
# still grouped (a step has a fixed cost: one pass over the weights).
PROMPT_GROUP_TOKENS = 32

# Embedding inputs are read in chunks, all of them together, never in a step that reads a
# prompt: with embeddings on, llama.cpp computes the output layer for every token of the step
# and keeps a logits row per token allocated from then on. The chunk is as long as about this
# many bytes of rows allow: 160 tokens for SmolLM2's 49k vocabulary (~0.9x llama-server's
# embedding speed; 32 tokens gave 0.8x), 32 for Gemma-3's 262k (docs/benchmarks.md).
EMBED_LOGITS_BYTES = 32 * 1024 * 1024


def embed_chunk(n_vocab: int) -> int:
    """Embedding input tokens per step: a multiple of 32, at least 32."""
    return max(32, EMBED_LOGITS_BYTES // (4 * max(1, n_vocab)) // 32 * 32)


Entry = tuple[int, int, int, bool]
"""(token, position, slot, wants logits): one token of a step's batch."""


class Backend(Protocol):
    n_parallel: int
    batch_size: int
    n_vocab: int
    encoder_only: bool
    """An embedding model without KV cache (BERT): every input is read whole, in one step."""

    def tokenize(self, text: str, add_special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def decode(self, entries: list[Entry], embeddings: bool = False) -> int: ...
    def compile_grammar(self, grammar: Grammar) -> str | None: ...
    def new_sampler(self, params: SamplingParams, seed: int) -> Any: ...
    def sample(self, sampler: Any, index: int) -> int: ...
    def free_sampler(self, sampler: Any) -> None: ...
    def logprobs(
        self, index: int, token: int, top: int
    ) -> tuple[float, list[tuple[int, float]]]: ...
    def seq_rm(self, seq: int, p0: int, p1: int) -> bool: ...
    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...
    def embed_rows(self, pooled: Any, start: int, count: int, first: bool) -> Any: ...
    def embedding(self, pooled: Any, n_tokens: int) -> bytes: ...


@dataclass
class Piece:
    """One slot's tokens for a step: the sequences that sample from its last token, or the
    embed request whose input it reads."""

    slot: int
    chunk: list[Entry]
    samplers: list[Sequence]
    embed: RequestState | None = None


class EngineFault(Exception):
    """llama.cpp failed in a way the process cannot recover from; the daemon restarts it."""


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


class Scheduler:
    def __init__(
        self, backend: Backend, ctx_per_seq: int, add_bos: bool, bos: int, bos_text: str = ""
    ) -> None:
        self.backend = backend
        self.ctx_per_seq = ctx_per_seq
        self.add_bos = add_bos
        self.bos = bos
        self.bos_text = bos_text
        self.slots = [Slot(i) for i in range(backend.n_parallel)]
        self.embed_chunk = embed_chunk(backend.n_vocab)
        self.encoder_only = backend.encoder_only
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        self.num_steps = 0
        self.num_tokens_decoded = 0
        # Fair admission (start-time fair queuing over tenants): a tenant's next request is
        # tagged `max(clock, tenant's last tag) + 1/weight`; the smallest tag goes first.
        self._fair_clock = 0.0
        self._fair_tags: dict[str, float] = {}

    # -- requests in and out ---------------------------------------------------------------

    def submit(self, req: GenerateRequest) -> list[Any]:
        """Tokenize and check a request; it joins the queue, or fails at once."""
        if isinstance(req.prompt, str):
            # Chat templates usually write the BOS themselves; do not add a second one.
            written = bool(self.bos_text) and req.prompt.startswith(self.bos_text)
            prompt = self.backend.tokenize(req.prompt, add_special=self.add_bos and not written)
        else:
            prompt = list(req.prompt)
        if not prompt:
            prompt = [self.bos]
        if self.encoder_only and not req.embed:
            return [
                Failed(
                    req.id,
                    400,
                    "This model is an embedding model: it answers /v1/embeddings only.",
                    code="model_not_supported",
                    param="model",
                )
            ]
        if req.n > len(self.slots):
            return [Failed(req.id, 400, f"n must be at most {len(self.slots)}", param="n")]
        grammar = req.sampling.grammar
        if grammar is not None:
            error = self.backend.compile_grammar(grammar)
            if error is not None:
                return [Failed(req.id, 400, error, param=grammar.param)]
        room = self.ctx_per_seq - len(prompt)
        if req.embed:
            if room < 0:
                return [
                    Failed(
                        req.id,
                        400,
                        f"This model's maximum context length is {self.ctx_per_seq} tokens. "
                        f"However, an input has {len(prompt)} tokens. Please reduce its length.",
                        code="context_length_exceeded",
                        param="input",
                    )
                ]
            self.waiting.append(RequestState(req, prompt, 0))
            return [Started(req.id, len(prompt), 0)]
        max_tokens = req.max_tokens if req.max_tokens is not None else room
        if room < 1 or max_tokens > room:
            asked = len(prompt) + max(max_tokens, 1 if room < 1 else max_tokens)
            return [
                Failed(
                    req.id,
                    400,
                    f"This model's maximum context length is {self.ctx_per_seq} tokens. "
                    f"However, you requested {asked} tokens ({len(prompt)} in the prompt, "
                    f"{max_tokens} for the completion). Please reduce the prompt or the "
                    "completion length.",
                    code="context_length_exceeded",
                    param="messages",
                )
            ]
        self.waiting.append(RequestState(req, prompt, max_tokens))
        prompt_text = None
        if req.return_prompt_text:
            prompt_text = b"".join(self.backend.token_bytes(t) for t in prompt).decode(
                "utf-8", "replace"
            )
        return [Started(req.id, len(prompt), max_tokens, prompt_text)]

    def cancel(self, request_id: str) -> None:
        for state in list(self.waiting):
            if state.req.id == request_id:
                self.waiting.remove(state)
        for state in self.running:
            if state.req.id == request_id:
                for seq in state.seqs:
                    self._finish(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> Stats:
        busy = sum(1 for s in self.slots if s.seq is not None)
        used = sum(len(s.cached) for s in self.slots)
        return Stats(
            running=busy,
            waiting=len(self.waiting),
            kv_cells_used=used,
            kv_cells_total=self.ctx_per_seq * len(self.slots),
            steps=self.num_steps,
            tokens_decoded=self.num_tokens_decoded,
        )

    # -- one step --------------------------------------------------------------------------

    def step(self) -> list[Any]:
        events: list[Any] = []
        self._retire()  # cancelled since the last step
        self._admit(events)
        # Each piece is one slot's tokens for this step, with the sequences that sample from
        # its last token. Pieces go into the batch in slot order: with one KV stream per slot,
        # llama.cpp splits a batch into micro-batches of consecutive sequence ids, so the same
        # 16 decodes in scrambled order cost 2.6x the time of a sorted step (docs/benchmarks.md).
        pieces: list[Piece] = []
        decoding: list[Sequence] = []
        for state in self.running:
            for seq in state.seqs:
                if seq.pending is not None and not seq.done:
                    entry = (seq.pending, len(seq.slot.cached), seq.slot.id, True)
                    pieces.append(Piece(seq.slot.id, [entry], [seq]))
                    decoding.append(seq)
        budget = self.backend.batch_size - len(pieces)
        prefilled: list[tuple[RequestState, int]] = []
        prompt_tokens = embed_tokens = 0
        for state in self.running:
            if budget <= 0:
                break
            if not state.is_prefilling:
                continue
            if prompt_tokens >= PROMPT_GROUP_TOKENS:
                # A prompt finished in this step already: the next one waits for the next
                # step, so requests arriving together get their first tokens one after
                # another instead of all at the end of one long step (docs/benchmarks.md).
                break
            embed = state.req.embed
            if (embed and prompt_tokens) or (embed_tokens and not embed):
                break  # embedding chunks and prompts never share a step (`embed_chunk`)
            leader = state.seqs[0]
            start = state.n_prefilled
            take = min(budget, len(state.prompt) - start)
            if embed and self.encoder_only:
                # Non-causal attention: an input is read whole, in one step, or waits.
                whole = take == len(state.prompt) - start
                if not whole or (embed_tokens and embed_tokens + take > self.embed_chunk):
                    break
            elif embed:
                take = min(take, self.embed_chunk - embed_tokens)
                if take <= 0:
                    break
            end = start + take
            # Every token of an embedding chunk is an output (its hidden state is pooled).
            chunk = [
                (state.prompt[pos], pos, leader.slot.id, embed or pos == len(state.prompt) - 1)
                for pos in range(start, end)
            ]
            samplers = []
            if end == len(state.prompt) and not embed:
                samplers = [s for s in state.seqs if not s.done]
            pieces.append(Piece(leader.slot.id, chunk, samplers, state if embed else None))
            prefilled.append((state, take))
            budget -= take
            if embed:
                embed_tokens += take
            else:
                prompt_tokens += take
        pieces.sort(key=lambda piece: piece.slot)
        entries: list[Entry] = []
        outputs: list[tuple[int, list[Sequence]]] = []
        embedded: list[tuple[RequestState, int, int]] = []
        for piece in pieces:
            if piece.embed is not None:
                embedded.append((piece.embed, len(entries), len(piece.chunk)))
            entries.extend(piece.chunk)
            if piece.samplers:
                outputs.append((len(entries) - 1, piece.samplers))
        if not entries:
            return events
        self._decode(entries, embeddings=bool(embedded))
        for state, start, count in embedded:
            first = state.n_prefilled == 0
            state.pooled = self.backend.embed_rows(state.pooled, start, count, first)
        self.num_steps += 1
        self.num_tokens_decoded += len(entries)
        for seq in decoding:
            assert seq.pending is not None
            seq.slot.cached.append(seq.pending)
            seq.pending = None
        for state, take in prefilled:
            leader = state.seqs[0]
            if not self.encoder_only:
                leader.slot.cached.extend(
                    state.prompt[state.n_prefilled : state.n_prefilled + take]
                )
            state.n_prefilled += take
            if state.is_prefilling:
                continue
            if state.req.embed:
                vector = self.backend.embedding(state.pooled, len(state.prompt))
                events.append(Embedding(state.req.id, vector))
                self._finish(leader)
            else:
                self._share_prompt(state)
        for index, seqs in outputs:
            for seq in seqs:
                self._sample(seq, index, events)
        self._retire()
        return events

    def _decode(self, entries: list[Entry], embeddings: bool) -> None:
        status = self.backend.decode(entries, embeddings)
        if status == 1:
            # No room for the batch: drop the caches of idle slots and try once more.
            for slot in self._free_slots():
                self._clear(slot)
            status = self.backend.decode(entries, embeddings)
        if status != 0:
            raise EngineFault(f"llama_decode failed with status {status}")

    def _sample(self, seq: Sequence, index: int, events: list[Any]) -> None:
        state = seq.request
        token = self.backend.sample(seq.sampler, index)
        seq.generated += 1
        logprobs = None
        if state.req.logprobs is not None:
            logprobs = [self._logprob(index, token, state.req.logprobs)]
        finish: str | None = None
        # Once a grammar is complete it allows nothing but the end of generation.
        ignore_eos = state.req.ignore_eos and state.req.sampling.grammar is None
        if self.backend.is_eog(token) and not ignore_eos:
            text = seq.text.flush()
            finish = "stop"
        else:
            text = seq.text.push(self.backend.token_bytes(token))
            if seq.text.stopped:
                finish = "stop"
            elif seq.generated >= state.max_tokens:
                text += seq.text.flush()
                finish = "length"
            else:
                seq.pending = token
        events.append(Delta(state.req.id, seq.index, text, 1, logprobs, finish))
        if finish is not None:
            self._finish(seq)

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        chosen, best = self.backend.logprobs(index, token, top)

        raw = self.backend.token_bytes(token)
        tops = []
        for tok, logprob in best:
            top_raw = self.backend.token_bytes(tok)
            tops.append(TopLogprob(top_raw.decode("utf-8", "replace"), logprob, list(top_raw)))
        return TokenLogprob(raw.decode("utf-8", "replace"), chosen, list(raw), tops)

    def _finish(self, seq: Sequence) -> None:
        if seq.done:
            return
        seq.done = True
        if seq.sampler is not None:
            self.backend.free_sampler(seq.sampler)

    def _retire(self) -> None:
        now = time.monotonic()
        still: list[RequestState] = []
        for state in self.running:
            if all(s.done for s in state.seqs):
                for seq in state.seqs:
                    seq.slot.seq = None
                    seq.slot.last_used = now
            else:
                still.append(state)
        self.running = still

    # -- admission and prefix reuse --------------------------------------------------------

    def _free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is None]

    def _next_waiting(self) -> tuple[RequestState, float]:
        """The waiting request to admit next: round-robin across tenants (API keys), weighted,
        FIFO within a tenant. One key with a hundred requests waiting cannot starve another's
        single request: that one goes at the next free slot, whatever the queue holds."""
        best: RequestState | None = None
        best_tag = 0.0
        seen: set[str] = set()
        for state in self.waiting:
            tenant = state.req.tenant
            if tenant in seen:
                continue
            seen.add(tenant)
            start = max(self._fair_clock, self._fair_tags.get(tenant, 0.0))
            tag = start + 1.0 / max(1, state.req.weight)
            if best is None or tag < best_tag:
                best, best_tag = state, tag
        assert best is not None
        return best, best_tag

    def _admit(self, events: list[Any]) -> None:
        free = self._free_slots()
        chosen: list[RequestState] = []
        room = len(free)
        while self.waiting:
            state, tag = self._next_waiting()
            if room < state.req.n:
                break
            room -= state.req.n
            self.waiting.remove(state)
            self._fair_tags[state.req.tenant] = tag
            self._fair_clock = tag - 1.0 / max(1, state.req.weight)
            if len(self._fair_tags) > 1024:  # forget tenants that are behind the clock
                self._fair_tags = {t: v for t, v in self._fair_tags.items() if v > self._fair_clock}
            chosen.append(state)
        # Requests admitted together are placed longest cached prefix first, and each keeps
        # off the free slots holding the prefixes of those still to be placed: in a burst, a
        # new prompt must not wipe the history a returning conversation behind it would reuse.
        # Embed requests need every token's hidden state: they reuse no cached prefix.
        found = {
            id(state): (None, 0) if state.req.embed else self._find_prefix(state.prompt)
            for state in chosen
        }
        chosen.sort(key=lambda state: -found[id(state)][1])
        for i, state in enumerate(chosen):
            # (A later request sharing this one's donor matches no more of it than this one
            # does, so this one may still cut that donor down to its own prefix.)
            keep = set()
            for later in chosen[i + 1 :]:
                donor = found[id(later)][0]
                if donor is not None and donor.seq is None and donor is not found[id(state)][0]:
                    keep.add(donor.id)
            leader_slot, cached = self._place(state.prompt, free, keep, not state.req.embed)
            free.remove(leader_slot)
            slots = [leader_slot]
            while len(slots) < state.req.n:
                slot = self._best_free(free, taken=slots, keep=keep)
                free.remove(slot)
                self._evict(slot, free, keep, None)
                slots.append(slot)
            state.n_prefilled = cached
            seed = state.req.sampling.seed
            base = seed if seed is not None else random.getrandbits(32)
            for index, slot in enumerate(slots):
                sampler = None
                if not state.req.embed:
                    sampler = self.backend.new_sampler(state.req.sampling, base + index)
                seq = Sequence(state, index, slot, sampler, TextStream(state.req.stop))
                slot.seq = seq
                state.seqs.append(seq)
            self.running.append(state)
            events.append(Admitted(state.req.id, cached))

    def _find_prefix(self, prompt: list[int]) -> tuple[Slot | None, int]:
        """The slot holding the longest useful cached prefix of `prompt`, and its length."""
        limit = len(prompt) - 1  # the last prompt token is always decoded, for its logits
        donor, length = None, 0
        for slot in sorted(self.slots, key=lambda s: (s.seq is None, s.last_used)):
            n = _common_prefix(slot.cached, prompt, limit)
            if n >= length and n > 0:
                donor, length = slot, n
        if length < min(MIN_SHARED_PREFIX, limit):
            return None, 0
        return donor, length

    def _place(
        self, prompt: list[int], free: list[Slot], keep: set[int], reuse: bool
    ) -> tuple[Slot, int]:
        """Pick a slot for a prompt and fill it with the longest cached prefix to be found
        (with `reuse`), leaving the caches of the free slots in `keep` as they are if at all
        possible."""
        donor, length = self._find_prefix(prompt) if reuse else (None, 0)
        target = self._best_free(free, taken=[], keep=keep)
        in_place = donor is target or (
            donor is not None
            and donor.id not in keep
            and self._runs([donor]) <= self._runs([target])
            and (length >= MIN_IN_PLACE_PREFIX or length == len(donor.cached))
        )
        if donor is not None and donor.seq is None and in_place:
            # The prefix is in a free slot that keeps the running slots together: use it.
            if length < len(donor.cached) and not self.backend.seq_rm(donor.id, length, -1):
                self._clear(donor)
                return donor, 0
            del donor.cached[length:]
            return donor, length
        self._evict(target, free, keep, donor)
        if donor is not None:
            # Copy the prefix next to the running slots rather than decode it where it lies:
            # a copy costs ~5 ms once, a gap between running slots ~20 ms every step.
            # Copies between KV streams must take the whole sequence; trim it afterwards.
            self.backend.seq_cp(donor.id, target.id, -1, -1)
            if not self.backend.seq_rm(target.id, length, -1):
                self._clear(target)
                return target, 0
            target.cached = prompt[:length]
        return target, length

    def _evict(self, target: Slot, free: list[Slot], keep: set[int], donor: Slot | None) -> None:
        """Empty `target` for a new sequence. Slots are chosen side by side, not least
        recently used first; so if another free slot holds an older cache, `target`'s moves
        there (a ~5 ms copy) and the older one goes: eviction stays least recently used."""
        older = [
            s
            for s in free
            if s is not target and s is not donor and s.id not in keep
            if s.last_used < target.last_used
        ]
        if len(target.cached) >= MIN_KEPT_CACHE and older:
            victim = min(older, key=lambda s: s.last_used)
            self._clear(victim)
            self.backend.seq_cp(target.id, victim.id, -1, -1)
            victim.cached = target.cached
            victim.last_used = target.last_used
        self._clear(target)

    def _best_free(self, free: list[Slot], taken: list[Slot], keep: set[int]) -> Slot:
        """The free slot for a new sequence: one whose cache is not kept for a request
        being admitted, then the one that leaves the fewest runs of consecutive busy slots
        (each run is one more pass over the weights per step, see `step`), then the one
        whose cache was used least recently."""
        return min(free, key=lambda s: (s.id in keep, self._runs([*taken, s]), s.last_used))

    def _runs(self, extra: list[Slot]) -> int:
        """Runs of consecutive slot ids among the busy slots plus `extra`."""
        busy = {s.id for s in self.slots if s.seq is not None} | {s.id for s in extra}
        return sum(1 for i in busy if i - 1 not in busy)

    def _share_prompt(self, state: RequestState) -> None:
        """n > 1: every choice starts from the leader's prompt cells instead of its own."""
        leader = state.seqs[0]
        for seq in state.seqs[1:]:
            self._clear(seq.slot)
            self.backend.seq_cp(leader.slot.id, seq.slot.id, -1, -1)
            seq.slot.cached = list(leader.slot.cached)

    def _clear(self, slot: Slot) -> None:
        self.backend.seq_rm(slot.id, -1, -1)
        slot.cached = []


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    # Whole chunks first (list slices compare in C): every admission compares its prompt
    # with every slot, and a shared 1,000-token system prompt must not cost milliseconds.
    while i + 64 <= n and a[i : i + 64] == b[i : i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i
