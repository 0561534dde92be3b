"""The one place that turns settings into a model's engine options (and so its memory
estimate): a model's table first, then the [engine] section, then what the machine suggests."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import psutil

from llmd.engine.client import EngineOptions
from llmd.engine.messages import LoadOptions, SpeculativeOptions
from llmd.engine.ngram import index_bytes
from llmd.gguf import Estimate, GGUFError, ModelFile, estimate, read_model_cached
from llmd.settings import ModelSettings, Settings


@functools.cache
def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def auto_threads(cores: int) -> tuple[int, int]:
    """(decode, prompt) threads when the config says 0.

    Decoding one token is bound by memory bandwidth, not compute: one core fewer costs little,
    and that core keeps the HTTP server and the clients from preempting llama.cpp's threads
    mid-step (on 2 cores: 1 decode thread gave 86 tok/s through the daemon, 2 gave 47; see
    docs/benchmarks.md). Reading prompts is compute-bound and gets every core.
    """
    return max(1, cores - 1), cores


def engine_options(settings: Settings, ms: ModelSettings, path: Path) -> EngineOptions:
    """How the model at `path`, configured by `ms`, is loaded and served."""
    engine = settings.engine
    spec = engine.speculative
    auto_decode, auto_batch = auto_threads(_physical_cores())
    load = LoadOptions(
        path=path,
        ctx_per_seq=ms.ctx_per_seq or engine.ctx_per_seq,
        parallel=ms.parallel or engine.parallel,
        batch_size=engine.batch_size,
        # Flash attention off: one micro-batch holds a whole step, as llama.cpp's cut by size
        # could leave a sequence one row of it (on: the model process cuts it to 63 rows,
        # llmd/engine/invariance.py; this is the larger, for the memory estimate).
        ubatch_size=(
            max(engine.ubatch_size, engine.batch_size)
            if engine.batch_invariant
            else engine.ubatch_size
        ),
        threads=ms.threads or engine.threads or auto_decode,
        threads_batch=engine.threads_batch or auto_batch,
        # llama.cpp's "auto" decides inside the context; invariance shapes steps for the
        # kernels it knows are in use (llmd/engine/invariance.py), so "auto" is made "on".
        flash_attn=(
            "on" if engine.batch_invariant and engine.flash_attn == "auto" else engine.flash_attn
        ),
        kv_type=engine.kv_type,
        draft_path=settings.draft_path(ms),
        batch_invariant=engine.batch_invariant,
        speculative=SpeculativeOptions(
            enabled=spec.enabled,
            max_draft=spec.max_draft,
            adaptive=spec.adaptive,
            ngram_min=spec.ngram_min,
            ngram_max=spec.ngram_max,
        ),
    )
    return EngineOptions(
        load=load,
        omp_wait_policy=engine.omp_wait_policy,
        omp_spin_count=engine.omp_spin_count,
        log_level=settings.server.log_level,
        max_queue=settings.server.max_queue,
        load_timeout_s=engine.load_timeout_s,
        hang_timeout_s=engine.hang_timeout_s,
        restart_backoff_max_s=engine.restart_backoff_max_s,
    )


def estimate_for(settings: Settings, ms: ModelSettings, file: ModelFile) -> Estimate:
    """The memory `file` will take loaded with these settings, from its header alone."""
    load = engine_options(settings, ms, file.path).load
    est = estimate(
        file,
        load.ctx_per_seq,
        load.parallel,
        min(load.ubatch_size, load.batch_size),
        load.kv_type,
        draft=draft_file(load.draft_path) if load.draft_path is not None else None,
        attention_scores=load.flash_attn in ("off", "fastest"),
    )
    if load.speculative.enabled and load.draft_path is None:
        # n-gram drafts: the slots' and the keys' lookup indexes (llmd/engine/ngram.py).
        lookups = index_bytes(load.parallel, load.ctx_per_seq)
        est = dataclasses.replace(est, compute=est.compute + lookups)
    return est


def draft_file(path: Path) -> ModelFile | None:
    """A draft model's file, read; None when it cannot be (its load then fails, saying why)."""
    try:
        return read_model_cached(path)
    except (GGUFError, OSError):
        return None
