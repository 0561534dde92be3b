"""Continuous batching: what each engine step decodes, and what it produced.

A fixed set of slots (llama.cpp sequence ids) holds sequences. Every step decodes one token
for each running sequence plus a bounded chunk of pending prompt tokens (chunked prefill), so
a long prompt never freezes the streams already running. Requests join at the next step and
leave when done. A finished sequence's KV cells stay in its slot until the slot is needed,
least recently used first, so a returning conversation or a shared system prompt is found
again (prefix reuse) instead of recomputed.

Which waiting request joins, and in which slots, is decided in `admission.py`; this module
builds and runs the steps. The scheduler knows nothing of llama.cpp: it drives a `Backend`
(`backend.py`), which tests replace.
"""

from __future__ import annotations

import time
from typing import Any

from llmd.engine.admission import Admission
from llmd.engine.backend import Backend, Entry
from llmd.engine.drafts import Drafts
from llmd.engine.invariance import Shapes, even_chunk, even_decodes, no_lone_rows
from llmd.engine.messages import (
    Admitted,
    Delta,
    Embedding,
    Failed,
    GenerateRequest,
    SpeculativeOptions,
    Started,
    Stats,
    TokenLogprob,
    TopLogprob,
)
from llmd.engine.prompt import prompt_tokens, too_long
from llmd.engine.sequence import Piece, RequestState, Sequence, Slot
from llmd.engine.speculate import StepCosts

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


class EngineFault(Exception):
    """llama.cpp failed in a way the process cannot recover from; the daemon restarts it."""


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        ctx_per_seq: int,
        add_bos: bool,
        bos: int,
        bos_text: str = "",
        speculative: SpeculativeOptions | None = None,
        costs: StepCosts | None = None,
        shapes: Shapes | None = None,
    ) -> None:
        self.backend = backend
        self.ctx_per_seq = ctx_per_seq
        self.add_bos = add_bos
        self.bos = bos
        self.bos_text = bos_text
        self.admission = Admission(backend)
        self.slots: list[Slot] = self.admission.slots
        self.waiting = self.admission.waiting
        self.embed_chunk = embed_chunk(backend.n_vocab)
        self.encoder_only = backend.encoder_only
        self.running: list[RequestState] = []
        self.shapes = None if backend.encoder_only else shapes
        """Steps shaped so that a token's logits do not depend on its step, always
        (`engine.batch_invariant`) or while one request decodes (llmd/engine/invariance.py)."""
        self.fill_gaps = not backend.encoder_only
        """Free slots between running ones get a filler token (`Admission.gap_fillers`), in
        steps without even rows (a filler's one row would cut its neighbours' rows)."""
        self.num_steps = 0
        self.num_tokens_decoded = 0
        self.num_fillers = 0
        # Speculative decoding: off unless options are given (the worker gives the model's).
        self.drafts = Drafts(
            speculative or SpeculativeOptions(enabled=False),
            getattr(backend, "drafter", None),  # a draft model, loaded with the model
            costs or StepCosts(0.012, 0.004, n_ubatch=backend.ubatch_size),
            ctx_per_seq,
            backend.batch_size,
        )

    # -- requests in and out ---------------------------------------------------------------

    def tokenize(self, req: GenerateRequest) -> list[int] | Failed:
        """The request's prompt as tokens, or why it cannot fit. Safe on another thread than
        the step loop's (the worker tokenizes as requests arrive, so a long prompt never
        holds up the steps of the others): it only reads the vocabulary."""
        return prompt_tokens(
            self.backend, req, self.ctx_per_seq, self.add_bos, self.bos, self.bos_text
        )

    def submit(self, req: GenerateRequest, tokens: list[int] | Failed | None = None) -> list[Any]:
        """Check a request (tokenized by `tokenize`, here if not yet); it joins the queue, or
        fails at once."""
        prompt = self.tokenize(req) if tokens is None else tokens
        if isinstance(prompt, Failed):
            return [prompt]
        if req.count_only:  # counted, not queued: no slot, no context check
            return [Started(req.id, len(prompt), 0)]
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
                why = f"an input has {len(prompt)} tokens. Please reduce its length."
                return [too_long(req, self.ctx_per_seq, why, "input")]
            self.waiting.append(RequestState(req, prompt, 0))
            return [Started(req.id, len(prompt), 0)]
        # No limit asked: as many tokens as the context leaves after the prompt.
        asked_max = req.sampling.max_tokens
        max_tokens = asked_max if asked_max is not None else room
        if req.max_tokens_up_to_room and room >= 1:
            max_tokens = min(max_tokens, room)
        if room < 1 or max_tokens > room:
            asked = len(prompt) + max(max_tokens, 1 if room < 1 else max_tokens)
            why = (
                f"you requested {asked} tokens ({len(prompt)} in the prompt, {max_tokens} for "
                "the completion). Please reduce the prompt or the completion length."
            )
            return [too_long(req, self.ctx_per_seq, why, req.prompt_param)]
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
            drafted=self.drafts.drafted,
            accepted=self.drafts.accepted,
            fillers=self.num_fillers,
        )

    # -- one step --------------------------------------------------------------------------

    def step(self) -> list[Any]:
        events: list[Any] = []
        self._retire()  # cancelled since the last step
        for state in self.admission.admit():
            self.running.append(state)
            events.append(Admitted(state.req.id, state.n_prefilled))
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
                    pieces.append(Piece(seq.slot.id, [entry], [seq], decode=True))
                    decoding.append(seq)
        self.drafts.add(pieces, self.running)
        shapes = self.shapes if self.shapes and self.shapes.applies(decoding) else None
        lone = shapes is not None and shapes.split_lone
        even = shapes is not None and shapes.even
        if even:
            even_decodes(pieces, self.ctx_per_seq, self.drafts.options.enabled)
        lone_fillers = self._no_lone_rows(pieces, shapes)
        # With `no_lone_rows`, a row kept back for a prompt chunk whose last row is alone.
        budget = self.backend.batch_size - sum(len(p.chunk) for p in pieces) - int(lone)
        prefilled, embed_tokens = self._prompt_chunks(pieces, budget, even)
        fillers: list[Slot] = []
        if self.fill_gaps and not even and not embed_tokens and len(pieces) > 1:
            # A free slot between running ones gets a token that keeps them one run.
            steps = [(piece.slot, len(piece.chunk)) for piece in pieces]
            room = self.backend.batch_size - sum(n for _, n in steps)
            fillers = self.admission.gap_fillers(steps, self.drafts.costs, room, self.ctx_per_seq)
            for slot in fillers:
                filler = (max(self.bos, 0), len(slot.cached), slot.id, False)
                pieces.append(Piece(slot.id, [filler], []))
        # Again, with the prompt chunks and gap fillers in the step.
        fillers += lone_fillers + self._no_lone_rows(pieces, shapes)
        pieces.sort(key=lambda piece: piece.slot)
        entries: list[Entry] = []
        outputs: list[tuple[int, list[Sequence]]] = []
        embedded: list[tuple[RequestState, int, int]] = []
        verified: list[tuple[int, Sequence, list[int], bool]] = []
        for piece in pieces:
            if piece.embed is not None:
                embedded.append((piece.embed, len(entries), len(piece.chunk) - piece.pad))
            entries.extend(piece.chunk)
            last = len(entries) - 1 - piece.pad
            if piece.draft:
                verified.append(
                    (last - len(piece.draft), piece.samplers[0], piece.draft, piece.guess)
                )
            elif piece.samplers:
                outputs.append((last, piece.samplers))
        if not entries:
            return events
        started = time.perf_counter()
        self._decode(entries, bool(embedded), fillers)
        for piece in pieces:
            if piece.pad:  # the rows that only made the count even
                self.backend.seq_rm(piece.slot, piece.chunk[-piece.pad][1], -1)
        for slot in fillers:  # the slot holds what it held before
            if not self.backend.seq_rm(slot.id, len(slot.cached), -1):
                # A model that cannot drop a sequence's last cells (recurrent): the slot's
                # cache goes, and no more fillers.
                self.admission.clear(slot)
                self.fill_gaps = False
        if not prefilled:  # the cost line is fitted to decode steps (speculate.py)
            took = time.perf_counter() - started
            cuts = self.drafts.costs.micro_batches([(p.slot, len(p.chunk)) for p in pieces])
            self.drafts.costs.observe(len(entries), took, len(cuts))
        for state, start, count in embedded:
            first = state.n_prefilled == 0
            state.pooled = self.backend.embed_rows(state.pooled, start, count, first)
        self.num_steps += 1
        self.num_tokens_decoded += len(entries)
        self.num_fillers += len(fillers)
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
        for index, seq, draft, guess in verified:
            self._verify(seq, index, draft, events, guess)
        self._retire()
        return events

    def _prompt_chunks(
        self, pieces: list[Piece], budget: int, even: bool
    ) -> tuple[list[tuple[RequestState, int]], int]:
        """Chunks of pending prompts for this step, added to `pieces` within `budget` rows
        (`even`: each of an even length, `even_chunk`): the prompts read (with how many of
        their tokens), and how many embedding tokens."""
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
            pad = 0
            if even:
                shaped = even_chunk(take, budget, start, self.ctx_per_seq)
                if shaped is None:
                    break
                take, pad = shaped
            end = start + take
            # Every token of an embedding chunk is an output (its hidden state is pooled).
            chunk = [
                (state.prompt[pos], pos, leader.slot.id, embed or pos == len(state.prompt) - 1)
                for pos in range(start, end)
            ]
            if pad:  # causal: the chunk's rows do not see it
                chunk.append((state.prompt[end - 1], end, leader.slot.id, False))
            samplers = []
            if end == len(state.prompt) and not embed:
                samplers = [s for s in state.seqs if not s.done]
            piece = Piece(leader.slot.id, chunk, samplers, state if embed else None, pad=pad)
            pieces.append(piece)
            prefilled.append((state, take))
            budget -= take + pad
            if embed:
                embed_tokens += take
            else:
                prompt_tokens += take
        return prefilled, embed_tokens

    def _no_lone_rows(self, pieces: list[Piece], shapes: Shapes | None) -> list[Slot]:
        """`no_lone_rows` on the step so far, where the shapes ask for it; its fillers."""
        if shapes is None or not shapes.split_lone:
            return []
        size, free = self.backend.batch_size, self.admission.free_slots()
        return no_lone_rows(pieces, shapes, self.ctx_per_seq, size, free, max(self.bos, 0))

    def _decode(self, entries: list[Entry], embeddings: bool, fillers: list[Slot]) -> None:
        status = self.backend.decode(entries, embeddings)
        if status == 1:
            # No room for the batch: drop the caches of idle slots and try once more (not
            # of those with a filler in the batch: it goes after what they hold).
            kept = {slot.id for slot in fillers}
            for slot in self.admission.free_slots():
                if slot.id not in kept:
                    self.admission.clear(slot)
            status = self.backend.decode(entries, embeddings)
        if status != 0:
            raise EngineFault(f"llama_decode failed with status {status}")

    def _sample(self, seq: Sequence, index: int, events: list[Any]) -> None:
        token = self._take(seq, index, events)
        if token is not None:
            seq.pending = token

    def _take(self, seq: Sequence, index: int, events: list[Any]) -> int | None:
        """Sample the sequence's next token from output row `index` and report it; the token,
        or None if it ended the sequence."""
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
        events.append(Delta(state.req.id, seq.index, text, 1, logprobs, finish, seq.text.matched))
        if finish is not None:
            self._finish(seq)
            return None
        return token

    # -- speculative decoding --------------------------------------------------------------

    def _verify(
        self, seq: Sequence, first: int, draft: list[int], events: list[Any], guess: bool = False
    ) -> None:
        """Sample row by row after the sequence's last token, as single steps would, keeping
        each draft token the sample confirms; the first sample that differs is the next
        token. Drawing x from the model's distribution and keeping the draft only if x equals
        it is speculative sampling for a draft of one token per position: the draft survives
        with the model's probability of it, and otherwise the token comes from the rest of the
        distribution, so the output's distribution (and a seed's output) is the model's."""
        ok = 0
        rejected = False
        for j in range(len(draft) + 1):
            token = self._take(seq, first + j, events)
            if token is None:
                break
            if j < len(draft) and token == draft[j]:
                seq.slot.cached.append(token)  # its cells were written in this step
                ok += 1
                continue
            rejected = j < len(draft)
            seq.pending = token
            break
        # The cells of the draft tokens not kept go; the slot holds exactly `cached`.
        if not self.backend.seq_rm(seq.slot.id, len(seq.slot.cached), -1):
            raise EngineFault("llama.cpp could not remove the cells of refused draft tokens")
        self.drafts.record(seq, len(draft), ok, rejected, learn=not guess)

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
        if not seq.request.req.embed:
            self.drafts.remember(seq)

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

    def _share_prompt(self, state: RequestState) -> None:
        """n > 1: every choice starts from the leader's prompt cells instead of its own."""
        leader = state.seqs[0]
        for seq in state.seqs[1:]:
            self.admission.clear(seq.slot)
            self.backend.seq_cp(leader.slot.id, seq.slot.id, -1, -1)
            seq.slot.cached = list(leader.slot.cached)
