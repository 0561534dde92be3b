"""Sampling speed in one process: llama.cpp's sampler chain (what llmd used before) against
llmd's numpy sampler (llmd/engine/sampler.py), per token, on real logits rows.

For each model, a short chat prompt is read once with logits for its last 8 positions; then
each contender samples from those rows in turn, the same way the engine does (the chain reads
llama.cpp's row itself, `llama_sampler_sample`; the numpy sampler goes through
`LlamaBackend.sample`). Parameter sets: greedy, temperature 1, 0.7 with top_p 0.95, top_k 40,
and temperature 1 with penalties.

    .venv/bin/python -m bench.sampling [--tokens N] [--repeats N] [--json OUT] [smollm2 gemma3]

Prints a table and writes the medians as JSON (default bench/results/sampling-<date>.json).
A few seconds per model.

Those rows stay in the caches between calls. In the engine a row is sampled right after the
step that wrote it, and the step has streamed every weight through the caches: whatever the
sampler touches comes from memory again. `--after-decode` measures that way: one token decoded
at a time (greedy, so every contender sees the same text), and after each step one contender
samples that step's row, in turn; the chain at llama-server's own defaults (top_k 40, top_p
0.95, min_p 0.05) and a bare argmax (reading the row once) are measured alongside.

    .venv/bin/python -m bench.sampling --after-decode [--sampled-text] [--tokens N] [MODEL ...]

With `--sampled-text` the text goes on with draws at temperature 1, as a sampled answer does,
and "numpy temperature 1, Whole" draws as before a draw without a cut was drawn by rejection
(`Envelope`): from the softmax's head; "numpy 0.7, top_p 0.95, Cut" as before a `top_p` cut
was drawn by rejection (`Nucleus`): from the tokens and weights of the cut.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import NAMED_MODELS, model_arg, omp_policy
from bench.report import write_results
from llmd.engine.messages import SamplingParams
from llmd.sampling import resolve

ROWS = 8
BASE = resolve()
CASES = {
    "greedy": replace(BASE, temperature=0.0),
    "temperature 1": BASE,
    "0.7, top_p 0.95": replace(BASE, temperature=0.7, top_p=0.95),
    "top_k 40": replace(BASE, top_k=40),
    "penalties": replace(BASE, repeat_penalty=1.1, frequency_penalty=0.5, presence_penalty=0.5),
}
PROMPT = (
    "<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a message in a "
    "bottle.<|im_end|>\n<|im_start|>assistant\nOnce upon a time, on a rocky island far from"
)


def _chain(lc: Any, n_vocab: int, params: SamplingParams, seed: int) -> Any:
    """llama.cpp's chain as llmd built it before (cuts first, temperature last)."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lc.llama_sampler_chain_add
    if params.repeat_penalty != 1 or params.frequency_penalty or params.presence_penalty:
        add(
            chain,
            lc.llama_sampler_init_penalties(
                n_vocab,
                params.repeat_last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.temperature <= 0:
        add(chain, lc.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, lc.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, lc.llama_sampler_init_temp(params.temperature))
    add(chain, lc.llama_sampler_init_dist(seed))
    return chain


def _per_token_us(run: Callable[[int], object], first: int, tokens: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `tokens` calls, on batch entries `first` to
    `first + ROWS - 1` in turn, in microseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(tokens):
            run(first + i % ROWS)
        times.append((time.perf_counter() - start) / tokens * 1e6)
    return statistics.median(times)


def measure(name: str, tokens: int, repeats: int) -> list[dict[str, object]]:
    import llama_cpp as lc

    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import LoadOptions

    b = LlamaBackend(LoadOptions(model_arg(name), 512, 1, 512, 512, 1, 2, "auto", "f16"))
    prompt = b.tokenize(PROMPT, True)
    n = len(prompt)
    if b.decode([(t, i, 0, i >= n - ROWS) for i, t in enumerate(prompt)]) != 0:
        raise RuntimeError("llama_decode failed")
    results: list[dict[str, object]] = []
    timing = (n - ROWS, tokens, repeats)
    print(f"{name} ({b.n_vocab} tokens): per-token sampling, median of {repeats} x {tokens}")
    for case, params in CASES.items():
        chain = _chain(lc, b.n_vocab, params, 1)
        sampler = b.new_sampler(params, 1)
        for i in range(64):  # a history for the penalties (both samplers)
            b.sample(sampler, n - ROWS + i % ROWS)
            lc.llama_sampler_sample(chain, b.ctx, n - ROWS + i % ROWS)
        old = _per_token_us(functools.partial(lc.llama_sampler_sample, chain, b.ctx), *timing)
        new = _per_token_us(functools.partial(b.sample, sampler), *timing)
        lc.llama_sampler_free(chain)
        b.free_sampler(sampler)
        speedup = old / new
        print(f"  {case:18s} llama.cpp chain {old:8.1f} us   numpy {new:8.1f} us  ({speedup:.1f}x)")
        results.append(
            {"model": name, "n_vocab": b.n_vocab, "case": case, "chain_us": old, "numpy_us": new}
        )
    b.close()
    return results


PEER_DEFAULTS = replace(BASE, top_k=40, top_p=0.95, min_p=0.05)
"""llama-server's sampling when a request names only the temperature."""


def after_decode(name: str, tokens: int, sampled: bool = False) -> list[dict[str, object]]:
    """Per-token sampling time on the row of the step just decoded (see the module docstring):
    median over the steps each contender was given. `sampled`: the text goes on with a draw
    at temperature 1 (its own seeded sampler) instead of the argmax, as a sampled answer
    does: such text is less sure of itself, and more of each row lies near its top."""
    import llama_cpp as lc
    import numpy as np

    from bench.spec_texts import prompt
    from llmd.engine.distributions import Whole
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import LoadOptions
    from llmd.templates import choose_template

    b = LlamaBackend(LoadOptions(model_arg(name), 2048, 1, 256, 256, 1, 2, "auto", "f16"))
    template = choose_template(None, b.metadata(), "", "")
    text = prompt("chat", "chat/0/0")
    if template is not None:
        text = template.render([{"role": "user", "content": text}]).text
    ids = b.tokenize(text, True)
    last = len(ids) - 1
    for start in range(0, len(ids), 256):
        chunk = ids[start : start + 256]
        if b.decode([(t, start + j, 0, start + j == last) for j, t in enumerate(chunk)]) != 0:
            raise RuntimeError("llama_decode failed")
    index = last % 256  # the prompt's last entry, in its last chunk
    chains: list[Any] = []
    contenders: list[tuple[str, Callable[[int], object]]] = []

    def chain_of(params: SamplingParams) -> Callable[[int], object]:
        chains.append(_chain(lc, b.n_vocab, params, 1))
        return functools.partial(lc.llama_sampler_sample, chains[-1], b.ctx)

    for case in ("temperature 1", "0.7, top_p 0.95"):
        sampler = b.new_sampler(CASES[case], 1)
        contenders.append((f"numpy {case}", functools.partial(b.sample, sampler)))
        contenders.append((f"chain {case}", chain_of(CASES[case])))
    whole_rng = np.random.default_rng(1)

    def whole(index: int) -> int:  # a draw without a cut as it was before `Envelope`
        row = b._logits(index)
        return Whole(row, float(row.max()), 1.0, b._workspace).draw(whole_rng)

    contenders.append(("numpy temperature 1, Whole", whole))
    top_p = b.new_sampler(CASES["0.7, top_p 0.95"], 1)

    def top_p_cut(index: int) -> int:  # a top_p cut as it was before `Nucleus`
        tokens = top_p.tokens
        return tokens.draw(tokens.cut(b._logits(index)))

    contenders.append(("numpy 0.7, top_p 0.95, Cut", top_p_cut))
    contenders.append(("chain top_k 40", chain_of(CASES["top_k 40"])))
    contenders.append(("chain llama-server defaults", chain_of(PEER_DEFAULTS)))
    contenders.append(("argmax", lambda i: int(b._logits(i).argmax())))
    times: dict[str, list[float]] = {label: [] for label, _ in contenders}
    text_sampler = b.new_sampler(CASES["temperature 1"], 7)
    pos = len(ids)
    for step in range(tokens):
        label, run = contenders[step % len(contenders)]
        started = time.perf_counter()
        run(index)
        times[label].append((time.perf_counter() - started) * 1e6)
        if sampled:
            token = b.sample(text_sampler, index)
            if b.is_eog(token):
                token = int(b._logits(index).argmax())
        else:
            token = int(b._logits(index).argmax())
        if pos + 1 >= 2048:
            b.seq_rm(0, len(ids), -1)
            pos = len(ids)
        if b.decode([(token, pos, 0, True)]) != 0:
            raise RuntimeError("llama_decode failed")
        pos, index = pos + 1, 0
    for chain in chains:
        lc.llama_sampler_free(chain)
    b.close()
    kind = "sampled at temperature 1" if sampled else "greedy"
    print(f"{name} ({b.n_vocab} tokens, {kind} text): the row of the step just decoded, median us")
    results: list[dict[str, object]] = []
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:32s} {median:8.1f} us  ({len(values)} steps)")
        results.append(
            {"model": name, "n_vocab": b.n_vocab, "text": kind, "contender": label, "us": median}
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.sampling", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=list(NAMED_MODELS))
    parser.add_argument(
        "--tokens", type=int, default=0, help="per run (200); --after-decode: steps (1400)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--after-decode", action="store_true", help="each row sampled right after its step"
    )
    parser.add_argument(
        "--sampled-text",
        action="store_true",
        help="--after-decode: the text goes on with draws at temperature 1, not the argmax",
    )
    args = parser.parse_args()
    omp_policy()
    if args.after_decode:
        steps = args.tokens or 1400
        rows = [row for name in args.models for row in after_decode(name, steps, args.sampled_text)]
        args.model, args.threads, args.threads_batch = ", ".join(args.models), 1, 2
        stem = f"sampling-after-decode-{time.strftime('%Y-%m-%d')}.json"
        out = args.json or Path(__file__).parent / "results" / stem
        write_results(out, "sampling", args, rows=rows, mode="after decode")
        return 0
    tokens = args.tokens or 200
    rows = [row for name in args.models for row in measure(name, tokens, args.repeats)]
    args.model, args.threads, args.threads_batch = ", ".join(args.models), 1, 2
    write_results(args.json, "sampling", args, rows=rows, rows_per_prompt=ROWS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
