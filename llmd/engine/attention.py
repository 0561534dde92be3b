"""Flash attention on or off for a model on this CPU, measured at load (`engine.flash_attn =
"fastest"`): which one is faster depends on the model's shape and the CPU, by a factor, not a
few percent.

llama.cpp's CPU flash attention reads the cached history row by row, one query and one head at
a time, for every step of under 64 tokens (GGML_FA_TILE_Q): decode steps and speculative
verification steps. Without it, attention is two matrix products per head, which the matrix
kernels do well. On an AVX-512 Xeon (2 cores, 2026-12-02, docs/benchmarks.md) with SmolLM2-135M
(30 layers of 9 heads of 64), a decode step 700 tokens into an answer took 45 ms with it and
26 ms without, a step of 17 tokens 315 ms against 94; with Gemma-3-270M (18 layers of 4 heads
of 256, most of them windowed) it was level or slightly ahead. Prompts (64 tokens or more a
step) take its tiled path and read 5-15% faster with it. llama.cpp's own "auto" turns it on
wherever the backend has it.

Why it is not the default: neither setting makes a token's logits independent of how its step
is batched (llmd/engine/invariance.py has the kernels' reasons and `engine.batch_invariant`,
which does), but they part at different places. With flash attention a step of 2-63 rows reads
each row's history whole, so on two cores (one decode thread) SmolLM2's greedy text is the same
with and without speculation at any length; without it a one-row step takes another f16 kernel
than a longer one, and the end-to-end tests of those guarantees fail even on short prompts.
"auto" keeps llama.cpp's choice; "fastest" is for an operator who wants the speed.

So with "fastest" two small contexts of the loaded model, one each way, read the same history and
time a one-token step and a nine-token step after it, taking turns; flash attention goes off
only when that is clearly faster (OFF_MARGIN), so a close call keeps llama.cpp's default and
does not flip from one load to the next. A quantized KV cache needs flash attention in
llama.cpp, and an encoder has no cache to measure: llama.cpp's own "auto" decides for those.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import llama_cpp as lc

from llmd.engine.context import context_params, fill_batch
from llmd.engine.messages import LoadOptions

log = logging.getLogger("llmd.engine")

# The history the probe's steps attend over: long enough that its attention shows (SmolLM2's
# steps of 1 and 9 tokens here took 0.70x as long without flash attention as with it, Gemma-3's
# 1.00x), short enough to read quickly in one step (~0.7 s for SmolLM2 on 2 cores, twice).
PROBE_DEPTH = 192
# Tokens of the probe's larger step: a speculative verification of 8 drafted tokens.
PROBE_STEP = 9
REPEATS = 3
# Off only when its steps take at most this share of the time they take with flash attention.
OFF_MARGIN = 0.9


def choose(model: Any, options: LoadOptions, token: int) -> str:
    """What the context gets: `options.flash_attn` as set; with "fastest" the faster of "on"
    and "off" on this CPU, both having just run, or "auto" (llama.cpp's own choice) where
    there is nothing to measure."""
    if options.flash_attn != "fastest":
        return options.flash_attn
    if options.kv_type not in ("f16", "f32"):
        return "auto"  # llama.cpp refuses a quantized V cache without flash attention
    started = time.perf_counter()
    times = measure(model, options, token)
    if times is None:
        return "auto"  # no KV cache (an encoder) or no context: llama.cpp decides
    on, off = times["on"], times["off"]
    choice = "off" if sum(off) < OFF_MARGIN * sum(on) else "on"
    log.info(
        "flash attention %s: steps of 1 and %d tokens after %d took %.1f and %.1f ms with it, "
        "%.1f and %.1f ms without (probe %.2f s)",
        choice, PROBE_STEP, PROBE_DEPTH, on[0] * 1e3, on[1] * 1e3, off[0] * 1e3, off[1] * 1e3,
        time.perf_counter() - started,
    )  # fmt: skip
    return choice


def measure(model: Any, options: LoadOptions, token: int) -> dict[str, list[float]] | None:
    """Per setting ("on", "off"), the best times of a one-token step and a PROBE_STEP step
    after PROBE_DEPTH cached tokens, in a one-sequence context of `model` each; the two
    contexts' steps alternate, so that the box's swings fall on both alike. None if either
    context cannot be made or has no KV cache."""
    contexts: dict[str, Any] = {}
    batch = lc.llama_batch_init(PROBE_DEPTH, 0, 1)
    try:
        for flash_attn in ("on", "off"):
            small = replace(
                options,
                ctx_per_seq=PROBE_DEPTH + 2 * PROBE_STEP,
                parallel=1,
                batch_size=PROBE_DEPTH,
                ubatch_size=PROBE_DEPTH,
                flash_attn=flash_attn,
            )
            ctx = lc.llama_init_from_model(model, context_params(small))
            if not ctx:
                return None
            contexts[flash_attn] = ctx
            if not lc.llama_get_memory(ctx) or _decode(ctx, batch, token, 0, PROBE_DEPTH) != 0:
                return None
        best = {name: [float("inf"), float("inf")] for name in contexts}
        for _ in range(REPEATS):
            for name, ctx in contexts.items():
                for i, n in enumerate((1, PROBE_STEP)):
                    began = time.perf_counter()
                    status = _decode(ctx, batch, token, PROBE_DEPTH, n, every=True)
                    best[name][i] = min(best[name][i], time.perf_counter() - began)
                    lc.llama_memory_seq_rm(lc.llama_get_memory(ctx), 0, PROBE_DEPTH, -1)
                    if status != 0:
                        return None
        return best
    finally:
        lc.llama_batch_free(batch)
        for ctx in contexts.values():
            lc.llama_free(ctx)


def _decode(ctx: Any, batch: Any, token: int, start: int, n: int, every: bool = False) -> int:
    """`n` copies of `token` at positions from `start` in sequence 0: logits for each with
    `every` (as a verification step), else for the last."""
    fill_batch(batch, [(token, start + i, 0, every or i == n - 1) for i in range(n)])
    return int(lc.llama_decode(ctx, batch))
