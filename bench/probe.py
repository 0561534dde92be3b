"""Engine probes: single llama.cpp steps timed in one process, no daemon, no HTTP.

The measurements behind the scheduler's choices (docs/benchmarks.md, entry 9):

- `order`: one 16-sequence decode step with the batch in slot order, shuffled, with a gap
  between running slots, and four sequences together or scattered;
- `copy`: copying a cached prefix into another slot's KV stream, against a plain decode;
- `prompt`: prompt reading speed, one prompt alone or several in one step, fresh or after
  a 600-token history (a multi-turn conversation's later turn);
- `mix`: what 15 decode tokens add to a step, alone or riding with a prompt chunk of 17 to
  134 tokens; then the ceilings that follow from those costs for the benchmark's 16-client
  and multi-turn workloads (docs/benchmarks.md, "the ceiling" and "the floor");
- `turn`: a conversation's next turn of 32 to 128 new tokens after a 700-token history, and
  the same tokens with no history: what attention over the history costs, and where
  llama.cpp's flash attention switches from its per-row path to its tiled one (64 tokens).
  Run it with `--flash-attn on` and `--flash-attn off` to compare.

    .venv/bin/python -m bench.probe [--model PATH] [--repeats N] [--json OUT]
                                    [--flash-attn auto|on|off] [order copy prompt mix turn]

Prints a table and writes every timing as JSON (default bench/results/probe-<date>.json).
Needs a quiet machine: every number is the median of the repeats.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import NAMED_MODELS, omp_policy
from bench.report import write_results

if TYPE_CHECKING:
    from llmd.engine.llama import LlamaBackend


Entry = tuple[int, int, int, bool]


def _backend(model: Path, threads: int, threads_batch: int, flash_attn: str) -> LlamaBackend:
    # Imported late: OMP_WAIT_POLICY must be set before llama.cpp's OpenMP starts.
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import LoadOptions

    return LlamaBackend(
        LoadOptions(model, 2048, 16, 512, 512, threads, threads_batch, flash_attn, "f16")
    )


class Probe:
    def __init__(
        self, model: Path, repeats: int, threads: int, threads_batch: int, flash_attn: str
    ) -> None:
        self.b = _backend(model, threads, threads_batch, flash_attn)
        self.repeats = repeats
        self.pos = [0] * 16
        self.rng = random.Random(7)
        self.rows: list[dict[str, object]] = []

    def _tok(self) -> int:
        return self.rng.randrange(1000, 20000)

    def _decode(self, entries: list[Entry]) -> None:
        for k in range(0, len(entries), 512):
            status = self.b.decode(entries[k : k + 512])
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")

    def _reset(self, seqs: range | list[int], keep: int = 0) -> None:
        for s in seqs:
            self.b.seq_rm(s, keep, -1)
            self.pos[s] = keep

    def _fill(self, seq: int, n: int) -> None:
        self._decode([(self._tok(), self.pos[seq] + i, seq, False) for i in range(n)])
        self.pos[seq] += n

    def _time(self, name: str, run: Callable[[], None], tokens: int) -> float:
        runs = []
        for _ in range(self.repeats):
            t = time.perf_counter()
            run()
            runs.append((time.perf_counter() - t) * 1000)
        ms = statistics.median(runs)
        self.rows.append({"probe": name, "ms": ms, "runs_ms": runs, "tokens": tokens})
        print(f"{name:52s} {ms:8.1f} ms  ({tokens / ms * 1000:6.0f} tok/s)")
        return ms

    def _step(self, seqs: list[int]) -> Callable[[], None]:
        def run() -> None:
            self._decode([(self._tok(), self.pos[s], s, True) for s in seqs])
            for s in seqs:
                self.pos[s] += 1

        return run

    def order(self) -> None:
        self._reset(range(16))
        for s in range(16):
            self._fill(s, 150)
        every = list(range(16))
        shuffled = every[:]
        self.rng.shuffle(shuffled)
        self._time("decode 16 seqs, batch in slot order", self._step(every), 16)
        self._time("decode 16 seqs, batch shuffled", self._step(shuffled), 16)
        self._time("decode 15 seqs, slots 0-6 and 8-15", self._step(every[:7] + every[8:]), 15)
        self._time("decode 4 seqs, slots 0-3", self._step([0, 1, 2, 3]), 4)
        self._time("decode 4 seqs, slots 0, 3, 7, 12", self._step([0, 3, 7, 12]), 4)

    def copy(self) -> None:
        self._reset(range(16))
        self._fill(0, 300)

        def plain() -> None:
            self._step([0])()

        def copied() -> None:
            self.b.seq_rm(1, -1, -1)
            self.b.seq_cp(0, 1, -1, -1)
            self.b.seq_rm(1, 200, -1)
            self.pos[1] = 200
            self._step([1])()

        self._time("decode 1 token", plain, 1)
        self._time("copy a 300-token stream, trim to 200, decode 1", copied, 1)

    def prompt(self) -> None:
        def read(seqs: list[int], n: int, history: int) -> Callable[[], None]:
            def run() -> None:
                self._reset(seqs, keep=history)
                entries = [
                    (self._tok(), history + i, s, i == n - 1) for s in seqs for i in range(n)
                ]
                self._decode(entries)

            return run

        self._reset(range(16))
        for n in (158, 512):
            self._time(f"prompt: 1 x {n} tokens, fresh", read([0], n, 0), n)
        self._time("prompt: 16 x 32 tokens in one step, fresh", read(list(range(16)), 32, 0), 512)
        self._reset(range(16))
        for s in range(4):
            self._fill(s, 600)
        for n in (1, 16, 54, 108):
            self._time(f"prompt: 1 x {n} tokens after 600", read([0], n, 600), n)
        self._time("prompt: 4 x 54 tokens in one step after 600", read([0, 1, 2, 3], 54, 600), 216)

    def mix(self) -> None:
        # Slots 0-14 decode at ~200 tokens of history; slot 15 reads a chunk after the
        # 24-token chat-template preamble (cached in the benchmark), as a new request would.
        self._reset(range(16))
        for s in range(16):
            self._fill(s, 200)
        decodes = list(range(15))

        def chunk(k: int) -> list[Entry]:
            self._reset([15], keep=24)
            return [(self._tok(), 24 + i, 15, i == k - 1) for i in range(k)]

        def prompt_only(k: int) -> Callable[[], None]:
            return lambda: self._decode(chunk(k))

        def both(k: int) -> Callable[[], None]:
            def run() -> None:
                entries = [(self._tok(), self.pos[s], s, True) for s in decodes]
                self._decode(entries + chunk(k))
                for s in decodes:
                    self.pos[s] += 1

            return run

        alone = self._time("mix: 15 decodes alone", self._step(decodes), 15)
        costs = {}
        for k in (17, 64, 134):
            prompt = self._time(f"mix: {k} prompt tokens alone", prompt_only(k), k)
            step = self._time(f"mix: 15 decodes + {k} prompt tokens", both(k), 15 + k)
            costs[k] = prompt
            print(f"{'':52s} 15 decodes add {step - prompt:6.1f} ms (alone {alone:.1f} ms)")
        self._fill(0, 400)  # slot 0: a 600-token conversation history

        def turn_after_600() -> None:
            self._reset([0], keep=600)
            self._decode([(self._tok(), 600 + i, 0, i == 51) for i in range(52)])

        turn = self._time("mix: 52-token turn after 600", turn_after_600, 52)
        # A 16-client round of the benchmark: 16 requests of 134 uncached prompt tokens and
        # 128 output tokens. Step costs add up (above), so no order of the same steps does
        # better than every prompt read at full-chunk speed and every decode in a full batch.
        per_decode, per_prompt = alone / 15, costs[134] / 134
        round_s = 16 * (134 * per_prompt + 128 * per_decode) / 1000
        print(
            f"ceiling, 16 clients: {16 * 128 / round_s:.1f} out tok/s "
            f"({per_prompt:.2f} ms per prompt token, {per_decode:.2f} ms per decode token)"
        )
        # Four conversations whose turns arrive together: the k-th first token needs k turns
        # read, so the median of the four is at least 2.5 turns' reading.
        print(f"floor, multi-turn median TTFT with 4 turns arriving together: {2.5 * turn:.0f} ms")
        self.rows.append(
            {
                "probe": "mix: ceilings",
                "tok_s_16_clients": 16 * 128 / round_s,
                "multiturn_ttft_floor_ms": 2.5 * turn,
            }
        )

    def turn(self) -> None:
        # A later turn of a conversation: its history is cached, only the new tokens are
        # read. Below 64 new tokens llama.cpp's CPU flash attention takes a row-by-row path
        # over the history; from 64 (GGML_FA_TILE_Q) a tiled one.
        history = 700
        self._reset([0])
        self._fill(0, history)

        def read(n: int, start: int) -> Callable[[], None]:
            def run() -> None:
                self._reset([0], keep=start)
                self._decode([(self._tok(), start + i, 0, i == n - 1) for i in range(n)])

            return run

        for n in (32, 52, 63, 64, 96, 128):
            self._time(f"turn: {n} new tokens after {history}", read(n, history), n)
        for n in (52, 64):
            self._time(f"turn: {n} tokens, no history", read(n, 0), n)
        self._reset([0])


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.probe", description=__doc__.split("\n")[0])
    parser.add_argument("probes", nargs="*", default=["order", "copy", "prompt"])
    parser.add_argument("--model", type=Path, default=NAMED_MODELS["smollm2"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="decode threads")
    parser.add_argument("--threads-batch", type=int, default=2, help="prompt threads")
    parser.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    omp_policy()
    probe = Probe(args.model, args.repeats, args.threads, args.threads_batch, args.flash_attn)
    for name in args.probes:
        getattr(probe, name)()
    write_results(
        args.json,
        "probe",
        args,
        repeats=args.repeats,
        flash_attn=args.flash_attn,
        rows=probe.rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
