"""What a step of one sequence costs with draft tokens: 1 + k tokens (all with logits) after a
history, every k below --max-tokens, in one process on the real backend (docs/benchmarks.md, the
speculative decoding section). The cost model (llmd/engine/speculate.py) fits the same line
from the steps the engine runs.

    .venv/bin/python -m bench.spec_steps [--model PATH] [--threads 1] [--threads-batch 2]
                                         [--flash-attn auto] [--history 700]
                                         [--max-tokens 17]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.harness import model_arg, omp_policy


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.spec_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=model_arg, default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-batch", type=int, default=2)
    parser.add_argument("--flash-attn", default="auto")
    parser.add_argument("--history", type=int, default=700)
    parser.add_argument("--max-tokens", type=int, default=17)
    args = parser.parse_args()
    omp_policy()  # before llama.cpp's OpenMP starts
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import LoadOptions

    model: Path = args.model
    options = LoadOptions(
        model, 2048, 16, 256, 256, args.threads, args.threads_batch, args.flash_attn, "f16"
    )
    backend = LlamaBackend(options)
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


if __name__ == "__main__":
    raise SystemExit(main())
