"""How llmd shapes a llama.cpp context, for a model and for its draft model alike: its size from
the slots, threads, flash attention, KV type, and one KV stream per slot."""

from __future__ import annotations

from typing import Any

import llama_cpp as lc

from llmd.engine.messages import LoadOptions

KV_TYPES = {"f32": lc.GGML_TYPE_F32, "f16": lc.GGML_TYPE_F16, "q8_0": lc.GGML_TYPE_Q8_0}
FLASH_ATTN = {
    "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
""""fastest" never reaches a context: llmd/engine/attention.py turns it into one of these."""


def fill_batch(batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """Put (token, position, seq_id, wants_logits) entries into a llama_batch."""
    token, pos, n_seq, seq_id, logits = (
        batch.token,
        batch.pos,
        batch.n_seq_id,
        batch.seq_id,
        batch.logits,
    )
    for i, (tok, position, seq, wants) in enumerate(entries):
        token[i] = tok
        pos[i] = position
        n_seq[i] = 1
        seq_id[i][0] = seq
        logits[i] = wants
    batch.n_tokens = len(entries)


def context_params(options: LoadOptions) -> Any:
    """llama_context_params for `options.parallel` slots of `options.ctx_per_seq` cells."""
    params = lc.llama_context_default_params()
    params.n_ctx = options.ctx_per_seq * options.parallel
    params.n_batch = options.batch_size
    params.n_ubatch = min(options.ubatch_size, options.batch_size)
    params.n_seq_max = options.parallel
    params.n_threads = options.threads
    params.n_threads_batch = options.threads_batch
    params.flash_attn_type = FLASH_ATTN[options.flash_attn]
    params.type_k = KV_TYPES[options.kv_type]
    params.type_v = KV_TYPES[options.kv_type]
    # One KV stream per sequence, not one unified pool: in a pool every token attends over
    # every used cell of every sequence (masked), so cached conversations kept for reuse would
    # slow down all decoding (measured: docs/benchmarks.md). The price is that reusing a
    # prefix held by another slot copies that slot's buffer (a few MB).
    params.kv_unified = False
    # Sliding-window layers normally keep only the window; prefix reuse needs all of it.
    params.swa_full = True
    params.no_perf = True
    return params
