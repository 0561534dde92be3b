"""What a step of one sequence costs with draft tokens: 1 + k tokens (all with logits) after a
history, every k below --max-tokens, in one process on the real backend (docs/benchmarks.md, the
speculative decoding section). The cost model (llmd/engine/speculate.py) fits the same line
from the steps the engine runs. With --streams N: steps of N sequences in slots 0..N-1 where
none, one or all of them bring draft tokens, with the micro-batches llama.cpp cuts each into
(`speculate.micro_batches`).

    .venv/bin/python -m bench.spec_steps [--model PATH] [--threads 1] [--threads-batch 2]
                                         [--flash-attn auto] [--history 700]
                                         [--max-tokens 17] [--streams 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import model_arg, omp_policy


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.spec_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=model_arg, default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-batch", type=int, default=2)
    parser.add_argument("--flash-attn", default="auto")
    parser.add_argument("--history", type=int, default=700)
    parser.add_argument("--max-tokens", type=int, default=17)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    omp_policy()  # before llama.cpp's OpenMP starts
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import LoadOptions

    model: Path = args.model
    options = LoadOptions(
        model, 2048, 16, 256, 256, args.threads, args.threads_batch, args.flash_attn, "f16"
    )
    backend = LlamaBackend(options)
    if args.streams > 1:
        streams(backend, args.streams, args.history)
        backend.close()
        return 0
    history = [1000 + (i * 37) % 5000 for i in range(args.history)]
    for start in range(0, len(history), 256):
        chunk = history[start : start + 256]
        backend.decode([(tok, start + i, 0, False) for i, tok in enumerate(chunk)])
    for k in range(args.max_tokens):
        runs = []
        for _ in range(7):
            entries = [(1234 + j, args.history + j, 0, True) for j in range(k + 1)]
            started = time.perf_counter()
            backend.decode(entries)
            runs.append((time.perf_counter() - started) * 1000)
            backend.seq_rm(0, args.history, -1)
        print(f"{model.name}: a step of {k + 1:2d} tokens {statistics.median(runs[1:]):7.1f} ms")
    backend.close()
    return 0


def streams(backend: Any, n: int, history: int) -> None:
    """Steps of n sequences, each after `history` tokens of its own, by how many tokens each
    brings: 1 (plain decode), one of them 1 + k, or all of them 1 + k."""
    from llmd.engine.speculate import micro_batches

    for slot in range(n):
        tokens = [1000 + (i * 37 + slot * 11) % 5000 for i in range(history)]
        for start in range(0, history, 256):
            chunk = tokens[start : start + 256]
            backend.decode([(tok, start + i, slot, False) for i, tok in enumerate(chunk)])
    layouts = {"every stream 1 token": [1] * n}
    for k in (1, 4, 8):
        layouts[f"slot 0 brings 1 + {k}"] = [1 + k] + [1] * (n - 1)
        layouts[f"slot {n // 2} brings 1 + {k}"] = [1] * (n // 2) + [1 + k] + [1] * (n - n // 2 - 1)
    for k in (1, 2, 4):
        layouts[f"every stream 1 + {k}"] = [1 + k] * n
    for name, counts in layouts.items():
        runs = []
        for _ in range(5):
            entries = [
                (1234 + j, history + j, slot, True)
                for slot, count in enumerate(counts)
                for j in range(count)
            ]
            started = time.perf_counter()
            backend.decode(entries)
            runs.append((time.perf_counter() - started) * 1000)
            for slot in range(n):
                backend.seq_rm(slot, history, -1)
        cuts = micro_batches(list(enumerate(counts)))
        print(
            f"{n} streams, {name:24s} {sum(counts):3d} tokens, micro-batches {cuts}: "
            f"{statistics.median(runs[1:]):7.1f} ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())
