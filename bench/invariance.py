"""Do a token's logits depend on how its step is batched? llmd's own llama.cpp context (one KV
stream per slot, as the daemon has it), per setting, in a fresh process each (llama.cpp reads
some switches once per process):

- `one_vs_k`: a 9-token continuation read as 9 one-token steps against one 9-token step (what
  greedy decoding without and with speculation computes);
- `filler_vs_k`: the same, each one-token step with a filler token in the next slot (a step
  of two rows in two streams, as `fill_gaps` makes);
- `two_vs_k`: steps of 2, 2, 2 and 3 tokens against one of 9;
- `prompt_chunks`: the prompt read in steps of 64 (62 with micro-batches of 63) against steps of
  512 (a reused prefix was read in other steps than the prompt that reuses it);
- `greedy_flips`: on a real quoting prompt, 120 tokens decoded one per step, then read again in
  steps of 9 as a draft that is always right: positions where the argmax differs, i.e. where
  greedy text with speculation would part from the text without.

Each cell is the largest |logit difference| over the rows compared (0 = bit for bit the same).
Settings: flash attention "on"/"off", and "plain" kernels (no repacked weights, no tiled
K-quant matrix kernel: what `engine.batch_invariant` loads) against llama.cpp's defaults;
"ub63": micro-batches of at most 63 rows (what `engine.batch_invariant` uses with flash
attention, under its 64-row tiles).

    .venv/bin/python -m bench.invariance --model smollm2 --depths 100,300,700 \\
        --json bench/results/invariance-2026-12-02-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import model_arg, omp_policy

SETTINGS = ("fa-on", "fa-off", "fa-on+plain", "fa-off+plain", "fa-on+plain+ub63")
CONTINUATION = 9


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.invariance", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=model_arg, default="smollm2")
    p.add_argument("--depths", default="100,300,700", help="tokens cached before the step")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child: one setting
    args = p.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    if args.one:
        print(json.dumps(measure(args.model, args.one, depths)))
        return 0
    results: dict[str, Any] = {"model": str(args.model), "depths": depths, "settings": {}}
    for setting in args.settings.split(","):
        cmd = [sys.executable, "-m", "bench.invariance", "--model", str(args.model)]
        cmd += ["--depths", args.depths, "--one", setting]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        cells = json.loads(out.strip().splitlines()[-1])
        results["settings"][setting] = cells
        row = " ".join(f"{k}={v:.3g}" for k, v in cells.items())
        print(f"{setting:14s} {row}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def measure(model: Path, setting: str, depths: list[int]) -> dict[str, float]:
    omp_policy()
    import numpy as np

    import llmd.engine.llama as llama
    from bench.spec_texts import prompt
    from llmd.engine.messages import LoadOptions
    from llmd.templates import choose_template

    fa = "on" if "fa-on" in setting else "off"
    # "plain": the weight kernels engine.batch_invariant loads with (no repacking, no tiling).
    # "ub63": micro-batches of at most 63 rows, under flash attention's 64-row tiles.
    ubatch = 63 if "ub63" in setting else 512
    options = LoadOptions(model, 2048, 4, 512, ubatch, 2, 2, fa, "f16")
    options = replace(options, batch_invariant="plain" in setting)
    backend = llama.LlamaBackend(options)

    def run(steps: list[list[tuple[int, int, int, bool]]]) -> Any:
        """Decode each step; the logits of the outputs of slot 0, in order."""
        rows = []
        for entries in steps:
            assert backend.decode(entries) == 0
            backend.seq_rm(1, 0, -1)  # a filler's cell goes, as the scheduler's does
            outputs = [i for i, e in enumerate(entries) if e[3]]
            rows += [backend._logits(i).copy() for i in outputs if entries[i][2] == 0]
        return np.array(rows)

    def reset() -> None:
        for slot in range(4):
            backend.seq_rm(slot, -1, -1)

    def read(tokens: list[int], chunk: int, out: bool = False) -> Any:
        steps = [
            [(t, pos, 0, out) for pos, t in list(enumerate(tokens))[i : i + chunk]]
            for i in range(0, len(tokens), chunk)
        ]
        return run(steps)

    rng = np.random.default_rng(0)
    cells: dict[str, float] = {}
    for depth in depths:
        history = [int(t) for t in rng.integers(100, 20000, depth)]
        extra = [int(t) for t in rng.integers(100, 20000, CONTINUATION)]
        cont = [(t, depth + i, 0, True) for i, t in enumerate(extra)]
        shapes = {
            "k": [cont],
            "one": [[e] for e in cont],
            "filler": [[e, (1, 0, 1, False)] for e in cont],
            "two": [cont[0:2], cont[2:4], cont[4:6], cont[6:9]],
        }
        got = {}
        for name, steps in shapes.items():
            reset()
            read(history, 512)
            got[name] = run(steps)
        for name in ("one", "filler", "two"):
            diff = float(np.abs(got[name] - got["k"]).max())
            cells[f"{name}_vs_k@{depth}"] = diff
        reset()
        a = read(history + extra, 512, out=True)
        reset()
        # Micro-batches of 63 rows: steps of 62 (64 would leave a 64th row alone in one, which
        # llmd's steps never do: `no_lone_rows`).
        b = read(history + extra, 62 if "ub63" in setting else 64, out=True)
        cells[f"prompt_chunks@{depth}"] = float(np.abs(a - b).max())
    # Greedy text: the real prompt, 120 tokens one per step, then again in steps of 9.
    template = choose_template(None, backend.metadata(), "", "")
    text = prompt("extraction", "extraction/0/0")
    if template is not None:
        text = template.render([{"role": "user", "content": text}]).text
    tokens = backend.tokenize(text, add_special=backend.adds_bos())
    reset()
    read(tokens[:-1], 512)
    answer, last = [], tokens[-1]
    for i in range(120):
        row = run([[(last, len(tokens) - 1 + i, 0, True)]])[0]
        last = int(row.argmax())
        answer.append(last)
    reset()
    read(tokens[:-1], 512)
    fed = [tokens[-1], *answer[:-1]]
    rows = run(
        [
            [(t, len(tokens) - 1 + i + j, 0, True) for j, t in enumerate(fed[i : i + 9])]
            for i in range(0, len(fed), 9)
        ]
    )
    cells["greedy_flips"] = float(
        sum(int(r.argmax()) != a for r, a in zip(rows, answer, strict=True))
    )
    cells["greedy_prompt_tokens"] = float(len(tokens))
    return cells


if __name__ == "__main__":
    sys.exit(main())
