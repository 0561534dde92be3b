"""A model in llama.cpp: load it, tokenize, decode a batch, sample. With grammar.py, the only
code that serves requests through llama.cpp (llmd/quantize.py uses its quantizer).

It runs in a model's child process, on the one thread that owns the context. It speaks
llama-cpp-python's low-level API (ctypes) directly: the high-level `Llama` class serves one
sequence at a time and would hide the batch we want to fill ourselves. Grammars (structured
output) are checked, and asked about the tokens sampled, in llmd/engine/grammar.py; tokens are
chosen from the logits in numpy, by llmd/engine/sampler.py.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import llama_cpp as lc
import numpy as np

from llmd import cpu
from llmd.engine import attention
from llmd.engine.amx import extra_buffers_usable
from llmd.engine.context import context_params, fill_batch
from llmd.engine.distributions import Workspace
from llmd.engine.draft import DraftError, DraftModel
from llmd.engine.grammar import Trigger, allows, best_allowed, compile_grammar, redraw
from llmd.engine.invariance import plain_weights, shapes_for
from llmd.engine.messages import Grammar, LoadOptions, SamplingParams
from llmd.engine.sampler import TokenSampler
from llmd.gguf import read_gguf

log = logging.getLogger("llmd.engine")

# GGUF `{arch}.pooling_type` values that name a pooling (embedding models declare theirs).
_POOLINGS = {1: "mean", 2: "cls", 3: "last"}
_LOGITS_ITH = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
ROW_VIEWS = 1024
"""Logits row views kept by address (a step's rows sit at fixed places in llama.cpp's output
buffer; the map starts again if that buffer moves often)."""
_META_KEYS = (
    "general.architecture",
    "general.name",
    "general.file_type",
    "tokenizer.chat_template",
    "general.size_label",
)


class LoadError(Exception):
    """The model file could not be loaded (missing, not GGUF, corrupt, too big)."""


_extra_buffers: list[bytes] = []
"""The buffers other than plain CPU memory that llama.cpp put weights in at the last load
("CPU_REPACK", "AMX"): which weights are repacked depends on the CPU, and llama.cpp says so
only in its log."""


# llama.cpp logs every tensor while loading; keep errors and warnings, drop the chatter.
@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user: Any) -> None:
    if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
        log.warning("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())
    elif b" model buffer size" in text:  # "load_tensors:   CPU_REPACK model buffer size = ..."
        name = text.split(b" model buffer size")[0].split(b":")[-1].strip()
        if name not in (b"CPU", b"CPU_Mapped"):
            _extra_buffers.append(name)


# llama_token_data as numpy sees it: a candidate array is filled from the logits in one go.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


@dataclass
class _Sampler:
    tokens: TokenSampler
    """Bias, penalties, temperature, the cuts and the draw, in numpy. llama.cpp's sampler
    chain copied the whole vocabulary into a candidate array for every token and sorted it
    for top_p, on one thread (docs/benchmarks.md, "Sampling without llama.cpp's chain")."""
    grammar: Any = None
    """The request's grammar (a llama.cpp grammar sampler): applying it to the whole
    vocabulary costs ~7 ms per token for SmolLM2, checking the one chosen token almost
    nothing."""
    trigger: Trigger | None = None
    """A grammar waiting for the output to write its opening ("auto" tool calls)."""


class LlamaBackend:
    """One llama.cpp model and context, with a reusable batch."""

    def __init__(self, options: LoadOptions) -> None:
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        cpu.load_backends()  # the CPU backend variant, in a build with variants
        lc.llama_backend_init()
        if not options.path.is_file():
            raise LoadError(f"model file not found: {options.path}")
        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.cpu_features = cpu.inspect().features
        model_params.use_extra_bufts = extra_buffers_usable(options.path, self.cpu_features)
        _extra_buffers.clear()  # this load's own
        if options.batch_invariant:
            # Repacked weights and the tiled K-quant kernel (steps of 8 rows or more) sum in
            # another order than the one-row kernels: Gemma-3's logits moved by up to 2.7
            # between a 9-token step and steps of 2 (bench/invariance.py). llama.cpp reads
            # GGML_CPU_TILED_MM once, at its first matrix product in this process, which is
            # the model process's own.
            model_params.use_extra_bufts = False
            os.environ["GGML_CPU_TILED_MM"] = "0"
        self.model = lc.llama_model_load_from_file(str(options.path).encode(), model_params)
        if not self.model:
            raise LoadError(f"llama.cpp could not load {options.path} (not a valid GGUF model?)")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        self.n_parallel = options.parallel
        self.batch_size = options.batch_size
        # "fastest" measured here, before the context is made; the draft model follows.
        self.flash_attn = attention.choose(
            self.model, options, max(int(lc.llama_vocab_bos(self.vocab)), 0)
        )
        options = replace(options, flash_attn=self.flash_attn)
        # Embeddings are read from this same context, a step at a time, with llama.cpp's
        # per-token hidden states; llmd pools them itself (`embed_rows`), so an input read
        # over several steps pools as one. Chat models pool nothing by default already.
        declared = self._declared_pooling()
        plain = plain_weights(set(read_gguf(options.path).tensor_types), bool(_extra_buffers))
        self.shapes, ubatch = shapes_for(options, self.flash_attn, bool(declared), plain)
        """How steps are shaped so that a token's logits do not depend on its step
        (llmd/engine/invariance.py)."""
        options = replace(options, ubatch_size=ubatch)

        ctx_params = context_params(options)
        self.ubatch_size = int(ctx_params.n_ubatch)
        self.pooling = declared or "mean"
        if declared:
            ctx_params.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        self.ctx = lc.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise LoadError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = int(lc.llama_n_ctx(self.ctx))
        self.memory = lc.llama_get_memory(self.ctx)
        # Encoder-only embedding models (BERT and its kin) have no KV cache: llama.cpp reads
        # each input whole, in one micro-batch, and they answer embeddings and nothing else.
        self.encoder_only = not self.memory
        self.max_input = options.ctx_per_seq
        if self.encoder_only:
            self.max_input = min(options.ctx_per_seq, self.n_ctx_train, ctx_params.n_ubatch)
        self.batch = lc.llama_batch_init(options.batch_size, 0, 1)
        self._logits_row = ctypes.c_float * self.n_vocab
        # llama_get_logits_ith answering an address, not a ctypes pointer object, and a view
        # kept per address: llama.cpp hands out the same few rows step after step, and right
        # after a step (caches cleared by the weights) building the view took ~65 us a token.
        self._logits_ith = _LOGITS_ITH(
            ctypes.cast(lc.llama_get_logits_ith, ctypes.c_void_p).value or 0
        )
        self._rows: dict[int, Any] = {}
        self._candidates: Any = None
        self._vocab_ids: Any = None
        self._workspace = Workspace(self.n_vocab)
        self.n_embd = int(lc.llama_model_n_embd_out(self.model))
        self._embd_row = ctypes.c_float * self.n_embd
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.drafter: DraftModel | None = None
        """The draft model (speculative decoding), when the model has one."""
        if options.draft_path is not None:
            try:
                self.drafter = DraftModel(options, self.vocab, self.cpu_features)
            except DraftError as exc:
                self.close()
                raise LoadError(str(exc)) from None

    def close(self) -> None:
        if self.drafter is not None:
            self.drafter.close()
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    # -- model facts ---------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        buf = ctypes.create_string_buffer(1 << 17)
        found: dict[str, str] = {}
        for key in _META_KEYS:
            size = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
            if size >= 0:
                found[key] = buf.value.decode("utf-8", "replace")
        return found

    def _declared_pooling(self) -> str | None:
        """The pooling an embedding model's GGUF declares (chat models declare none)."""
        arch = self.metadata().get("general.architecture", "")
        buf = ctypes.create_string_buffer(32)
        key = f"{arch}.pooling_type".encode()
        if lc.llama_model_meta_val_str(self.model, key, buf, len(buf)) >= 0:
            value = buf.value.decode()
            if value.isdigit() and int(value) in _POOLINGS:
                return _POOLINGS[int(value)]
        return None

    def model_bytes(self) -> int:
        return int(lc.llama_model_size(self.model))

    def special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    @property
    def bos(self) -> int:
        return int(lc.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(lc.llama_vocab_eos(self.vocab))

    # -- text <-> tokens -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """Tokens of `text`; `parse_special=False` reads special-token text as plain text.
        Safe off the step loop's thread: llama.cpp only reads the vocabulary here."""
        # JSON allows lone surrogates ("\ud800"); they are not text: make them U+FFFD.
        data = text.encode("utf-8", "replace")
        capacity = len(data) + 8
        tokens = (lc.llama_token * capacity)()
        args = (add_special, parse_special)
        n = lc.llama_tokenize(self.vocab, data, len(data), tokens, capacity, *args)
        if n < 0:
            capacity = -n
            tokens = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self.vocab, data, len(data), tokens, capacity, *args)
        return list(tokens[:n])

    def special_texts(self) -> list[str]:
        """The text of every control token, which only markup should produce. One pass over
        the vocabulary's attributes (~0.1 s for SmolLM2's 49k tokens, ~0.5 s for Gemma 3's
        262k: docs/tools.md)."""
        attr, vocab = lc.llama_vocab_get_attr, self.vocab
        mask = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        ids = [t for t in range(self.n_vocab) if attr(vocab, t) & mask]
        return sorted({text for t in ids if (text := self.special_text(t))})

    def adds_bos(self) -> bool:
        return bool(lc.llama_vocab_get_add_bos(self.vocab))

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token, special=False)
        return piece

    def _piece(self, token: int, special: bool) -> bytes:
        n = lc.llama_token_to_piece(
            self.vocab, token, self._piece_buf, len(self._piece_buf), 0, special
        )
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    # -- KV cache --------------------------------------------------------------------------

    def seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        if self.encoder_only:
            return True  # nothing kept between steps
        return bool(lc.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        if not self.encoder_only:
            lc.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    # -- one step --------------------------------------------------------------------------

    def decode(self, entries: list[tuple[int, int, int, bool]], embeddings: bool = False) -> int:
        """Decode (token, position, seq_id, wants_logits) entries; llama_decode's status.

        With `embeddings`, every entry also leaves its hidden state (`embed_rows`), and its
        logits too: llama.cpp outputs every token then, which costs the output layer for each
        (why the scheduler keeps embedding chunks small and apart from prompt chunks)."""
        batch = self.batch
        fill_batch(batch, entries)
        if not embeddings:
            return int(lc.llama_decode(self.ctx, batch))
        lc.llama_set_embeddings(self.ctx, True)
        try:
            return int(lc.llama_decode(self.ctx, batch))
        finally:
            lc.llama_set_embeddings(self.ctx, False)

    def embed_rows(self, pooled: Any, start: int, count: int, first: bool) -> Any:
        """Fold the hidden states of entries `start`..`start+count-1` of the last decode (made
        with `embeddings`) into `pooled` (None at first): a sum for mean pooling, the first
        row of the input (`first`: this chunk starts it) for cls, the latest row for last."""
        rows = np.empty((count, self.n_embd), np.float64)
        for k in range(count):
            address = ctypes.cast(
                lc.llama_get_embeddings_ith(self.ctx, start + k), ctypes.c_void_p
            ).value
            if not address:
                raise RuntimeError(f"llama.cpp has no embedding for batch entry {start + k}")
            rows[k] = np.frombuffer(memoryview(self._embd_row.from_address(address)), np.float32)
        if self.pooling == "cls":
            return rows[0] if first else pooled
        if self.pooling == "last":
            return rows[-1]
        total = rows.sum(axis=0)
        return total if pooled is None else pooled + total

    def embedding(self, pooled: Any, n_tokens: int) -> bytes:
        """The finished embedding: unit length (as OpenAI's are), float32 bytes."""
        vector = pooled / n_tokens if self.pooling == "mean" else pooled
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        return bytes(np.asarray(vector, "<f4").tobytes())

    def compile_grammar(self, grammar: Grammar) -> str | None:
        """Write `grammar.gbnf` and check that llama.cpp accepts it; else say why not."""
        return compile_grammar(self.vocab, grammar)

    def new_sampler(self, params: SamplingParams, seed: int) -> _Sampler:
        sampler = _Sampler(TokenSampler(params, seed, self._workspace))
        if params.grammar is not None:
            if params.grammar.lazy:
                tokenize = functools.partial(self.tokenize, add_special=False)
                sampler.trigger = Trigger(self.vocab, params.grammar, tokenize, self.token_bytes)
            else:
                gbnf = params.grammar.gbnf.encode()
                sampler.grammar = lc.llama_sampler_init_grammar(self.vocab, gbnf, b"root")
        return sampler

    def _logits(self, index: int) -> Any:
        address = self._logits_ith(self.ctx, index)
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch entry {index}")
        # An address llama.cpp just returned holds a row now, whichever buffer it is in.
        row = self._rows.get(address)
        if row is None:
            if len(self._rows) >= ROW_VIEWS:
                self._rows.clear()
            row = np.frombuffer(memoryview(self._logits_row.from_address(address)), np.float32)
            self._rows[address] = row
        return row

    def sample(self, sampler: _Sampler, index: int) -> int:
        """One token for batch entry `index`: one draw from the sequence's generator (none
        when greedy; more under a grammar that refuses a draw), and the penalties' history and
        the grammar advanced with the token returned."""
        tokens = sampler.tokens
        if sampler.grammar is not None:
            token = self._sample_grammar(sampler, self._logits(index))
        else:
            # Greedy without bias or penalties is an argmax over llama.cpp's own row.
            token = tokens.choose(tokens.logits(self._logits(index)))
        if sampler.trigger is not None:
            token, sampler.grammar = sampler.trigger.take(token)
            if sampler.grammar is not None:
                sampler.trigger = None
        tokens.accept(token)
        return token

    def _sample_grammar(self, sampler: _Sampler, row: Any) -> int:
        """Ask the grammar about the token the model would pick, then about a few more of its
        likely picks (greedy) or further draws from the same distribution (sampled); only if
        it refuses them all, filter the whole vocabulary through the grammar and choose again.
        (llama.cpp's own server also checks the first pick alone. Filtering the vocabulary
        costs ~7 ms per token for SmolLM2, checking a token ~5 us.)"""
        tokens = sampler.tokens
        logits = tokens.logits(row)
        if tokens.greedy:
            token = best_allowed(sampler.grammar, logits)
        else:
            distribution = tokens.distribution(logits)
            token = tokens.draw(distribution)
            if not allows(sampler.grammar, token):
                token = redraw(sampler.grammar, lambda: tokens.draw(distribution))
        if token is None:
            allowed = self.grammar_filter(sampler.grammar, logits)
            token = tokens.choose(allowed) if np.isfinite(allowed.max()) else None
            if token is None or not allows(sampler.grammar, token):
                # Nothing can follow (a grammar asking for a byte no token writes, such as
                # NUL). llama.cpp aborts the process when a grammar accepts a token it
                # refuses, so the answer ends here instead, as if the model had stopped.
                return self.eos
        lc.llama_sampler_accept(sampler.grammar, token)
        return token

    def grammar_filter(self, grammar: Any, logits: Any) -> Any:
        """`logits` with every token the grammar refuses next at -inf (a new row): the whole
        vocabulary through llama.cpp's grammar sampler, the last resort."""
        if self._candidates is None:  # one buffer, reused
            self._candidates = (lc.llama_token_data * self.n_vocab)()
            self._vocab_ids = np.arange(self.n_vocab, dtype=np.int32)
        view = np.frombuffer(memoryview(self._candidates), dtype=_TOKEN_DATA)
        view["id"] = self._vocab_ids
        view["logit"] = logits
        view["p"] = 0.0
        candidates = lc.llama_token_data_array(self._candidates, self.n_vocab, -1, False)
        lc.llama_sampler_apply(grammar, ctypes.byref(candidates))
        allowed = np.full(self.n_vocab, -np.inf, dtype=np.float32)
        kept = view[: int(candidates.size)]
        allowed[kept["id"]] = kept["logit"]
        return allowed

    def free_sampler(self, sampler: _Sampler) -> None:
        if sampler.grammar is not None:
            lc.llama_sampler_free(sampler.grammar)

    def logprobs(self, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """Log-probability of `token` and the `top` most likely tokens at output `index`.

        Taken from the model's raw distribution (before penalties and temperature), as OpenAI
        reports it.
        """
        logits = self._logits(index).astype(np.float64)
        peak = logits.max()
        logsum = peak + np.log(np.exp(logits - peak).sum())
        chosen = float(logits[token] - logsum)
        if top <= 0:
            return chosen, []
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best])]
        return chosen, [(int(t), float(logits[t] - logsum)) for t in best]
