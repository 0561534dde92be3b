"""llama.cpp's AMX kernels, tried in a child process before a model is loaded with them.

On a CPU with AMX (Xeon 4th generation and later), llama.cpp puts a model's weights in its
"extra" buffer types and multiplies a step of more than a token with tile instructions. Built
by GCC 12 (Debian 12's compiler: a native pip build and the .deb's sapphirerapids variant
alike), its tile setup is miscompiled: the stores of the tile shapes into the configuration
that `ldtilecfg` reads are dropped as dead, every tile is left unconfigured, and the first tile
instruction raises #UD, so the model process dies of SIGILL on its first prompt
(docs/operations.md, "CPUs with AMX"). Only running the build tells, so where the CPU backend
was built with AMX a forked child loads the model with the extra buffers and decodes one batch
first; if that child dies of SIGILL, the model is loaded without them (llama.cpp's plain CPU
kernels, as `llama-server --no-repack`), and the worker says so in its log.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp as lc

log = logging.getLogger("llmd.worker")

FEATURE = "AMX_INT8"
"""ggml's name, in the CPU backend's features, for a build with the AMX kernels."""
BATCH = 32
"""Tokens in the child's step: more than one goes through the tiles."""
TIMEOUT_S = 120.0

_checked: dict[Path, bool] = {}


def extra_buffers_usable(path: Path, features: list[str]) -> bool:
    """Whether the model at `path` may be loaded with llama.cpp's extra buffer types here:
    True without trying where the CPU backend has no AMX kernels, else what a child found
    (once per model file and process)."""
    if FEATURE not in features:
        return True
    if path not in _checked:
        _checked[path] = survives(lambda: _decode_one_batch(path))
        if not _checked[path]:
            log.warning(
                "llama.cpp's AMX kernels died of SIGILL on a batch here (a build whose tile "
                "setup its compiler dropped, GCC 12's); %s is loaded without its extra "
                "buffer types",
                path.name,
            )
    return _checked[path]


def survives(work: Callable[[], object]) -> bool:
    """Run `work` in a forked child: False only if it died of SIGILL (any other end, a hang
    included, is the real load's to meet). Call it before this process has started
    llama.cpp's threads: a fork copies only the calling thread."""
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves through _exit
        faulthandler.disable()  # its death is the answer, not a traceback for the journal
        try:
            work()
        finally:
            os._exit(0)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGILL)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return True
        time.sleep(0.01)


def _decode_one_batch(path: Path) -> int:
    """Load the model with the extra buffers (llama.cpp's default) and decode BATCH tokens:
    llama_decode's status, or -1 if the model or its context did not load."""
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return -1
    ctx_params = lc.llama_context_default_params()
    ctx_params.n_ctx = ctx_params.n_batch = ctx_params.n_ubatch = BATCH * 2
    ctx_params.n_threads = ctx_params.n_threads_batch = 1
    ctx = lc.llama_init_from_model(model, ctx_params)
    if not ctx:
        return -1
    tokens = (lc.llama_token * BATCH)(*range(BATCH))
    return int(lc.llama_decode(ctx, lc.llama_batch_get_one(tokens, BATCH)))
