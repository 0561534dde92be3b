"""llmd's engine speed in one process: the backend and the scheduler, no HTTP, no IPC.

Run by the benchmark (bench.workloads.llmd_engine) in a process of its own, with the OpenMP
policy in its environment before llama.cpp starts:

    python -m bench.engine_speed MODEL THREADS THREADS_BATCH PARALLEL STREAMS TOKENS

prints one JSON line: the model's end-of-generation ids (`eog`), whether its GGUF has a chat
template, the raw decode loop's tokens/s (`raw_decode_tok_s`), and the scheduler's with one
stream and with STREAMS at once (`scheduler_one_tok_s`, `scheduler_<STREAMS>_tok_s`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadgen import make_user_prompt
from llmd.engine.llama import LlamaBackend
from llmd.engine.messages import Delta, GenerateRequest, LoadOptions
from llmd.engine.scheduler import Scheduler
from llmd.sampling import resolve

CTX = 2048


def raw_decode(b: LlamaBackend, tokens: int) -> float:
    """Tokens/s of a bare sample-decode loop on one sequence (the prompt read untimed)."""
    prompt = b.tokenize("Once upon a time", True)
    b.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    sampler = b.new_sampler(resolve(temperature=0), 0)
    pos, idx = len(prompt), len(prompt) - 1
    start = time.perf_counter()
    for _ in range(tokens):
        tok = b.sample(sampler, idx)
        b.decode([(tok, pos, 0, True)])
        pos, idx = pos + 1, 0
    rate = tokens / (time.perf_counter() - start)
    b.seq_rm(0, -1, -1)
    return rate


def scheduled(b: LlamaBackend, n: int, tokens: int, salt: str) -> float:
    """Output tokens/s of the scheduler running `n` greedy requests of `tokens` tokens."""
    s = Scheduler(b, CTX, b.adds_bos(), b.bos)
    for i in range(n):
        text = make_user_prompt(150, f"{salt}/{i}") if n > 1 else "Once upon a time"
        s.submit(
            GenerateRequest(
                f"r{i}",
                text,
                resolve(temperature=0, max_tokens=tokens + 1),
                ignore_eos=True,
            )
        )
    if n == 1:
        s.step()  # prompt and first token, like the raw loop's untimed part
    produced, start = 0, time.perf_counter()
    while s.has_work():
        produced += sum(e.tokens for e in s.step() if isinstance(e, Delta))
    for slot in s.slots:
        b.seq_rm(slot.id, -1, -1)
    return produced / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    model, *numbers = (sys.argv[1:] if argv is None else argv)[:6]
    threads, threads_batch, parallel, streams, tokens = map(int, numbers)
    options = LoadOptions(
        Path(model), CTX, parallel, 256, 256, threads, threads_batch, "auto", "f16"
    )
    b = LlamaBackend(options)
    out: dict[str, Any] = {
        "eog": [t for t in range(b.n_vocab) if b.is_eog(t)],
        "chat_template": "tokenizer.chat_template" in b.metadata(),
        "raw_decode_tok_s": raw_decode(b, tokens),
        "scheduler_one_tok_s": scheduled(b, 1, tokens, "one"),
    }
    if streams > 1:
        out[f"scheduler_{streams}_tok_s"] = scheduled(b, streams, tokens, "many")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
