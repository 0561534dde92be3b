"""Speculative decoding in one process, no HTTP: llmd's scheduler on the real backend with
bench.spec_texts' prompts, each arm in turn (order reversed every repeat), output tokens per
second once every prompt is read. Tells llmd's own settings apart on the same text, which the
side-by-side run cannot (contenders' greedy answers differ; docs/benchmarks.md). Each run also
splits its time per step into llama.cpp's decode and the rest (sampling, drafting, the
scheduler): with the same steps in two arms (greedy, no draft made), the decode's share is the
box's swing and the rest is what the arm itself costs.

    .venv/bin/python -m bench.spec_inproc --model gemma3 --workload code_edit \
        --max-draft 0,8,16,32                       # one stream; 0 = speculation off
    .venv/bin/python -m bench.spec_inproc --model gemma3 --workload chat --streams 16 \
        --temperature 0.7 --top-p 0.95 --max-draft 0,16 --max-tokens 200
    .venv/bin/python -m bench.spec_inproc --model smollm2 --workload json --max-draft 16 \
        --agree 0,1                                 # n-gram drafts cut where matches part
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import model_arg, omp_policy
from bench.spec_texts import MAX_TOKENS, WORKLOADS, prompt


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.spec_inproc", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", type=model_arg, default="smollm2", help="smollm2, gemma3 or a GGUF path"
    )
    p.add_argument("--workload", default="code_edit", choices=WORKLOADS)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--max-draft", default="0,16", help="comma list; 0 = speculation off")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=0, help="0: the workload's own")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--agree",
        default="1",
        help="comma list: 1 cuts each n-gram draft where the two latest longest matches part "
        "(the default), 0 drafts what followed the latest; each max_draft arm with each",
    )
    args = p.parse_args()
    omp_policy()  # before llama.cpp's OpenMP starts
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import Delta, GenerateRequest, LoadOptions, SpeculativeOptions
    from llmd.engine.ngram import NgramDrafter
    from llmd.engine.scheduler import Scheduler
    from llmd.engine.speculate import probe_costs
    from llmd.sampling import resolve
    from llmd.templates import choose_template

    model: Path = args.model
    backend = LlamaBackend(
        LoadOptions(model, 2048, max(args.streams, 4), 256, 256, 1, 2, "auto", "f16")
    )
    decoding = [0.0]  # seconds inside llama.cpp's decode since the run started
    decoded = [0]  # tokens decoded in the current step
    decode = backend.decode

    def timed_decode(entries: Any, *a: Any, **k: Any) -> int:
        started = time.perf_counter()
        try:
            return decode(entries, *a, **k)
        finally:
            decoding[0] += time.perf_counter() - started
            decoded[0] += len(entries)

    backend.decode = timed_decode  # type: ignore[method-assign]
    template = choose_template(None, backend.metadata(), "", "")
    max_tokens = args.max_tokens or MAX_TOKENS[args.workload]
    arms = [(int(k), a == "1") for k in args.max_draft.split(",") for a in args.agree.split(",")]
    rates: dict[tuple[int, bool], list[float]] = {arm: [] for arm in arms}
    parts: dict[tuple[int, bool], list[tuple[float, float]]] = {arm: [] for arm in arms}
    for rep in range(args.repeats):
        for k, agree in arms if rep % 2 == 0 else arms[::-1]:
            costs = probe_costs(backend, max(backend.bos, 0))
            spec = SpeculativeOptions(enabled=k > 0, max_draft=max(k, 1))
            s = Scheduler(
                backend, 2048, backend.adds_bos(), backend.bos, speculative=spec, costs=costs
            )
            if isinstance(s.drafts.drafter, NgramDrafter) and not agree:
                s.drafts.drafter.agree_min = spec.ngram_max + 1  # no match is that long
            for i in range(args.streams):
                text = prompt(args.workload, f"{args.workload}/{rep}/{i}")
                if template is not None:  # a chat model answers the user message
                    text = template.render([{"role": "user", "content": text}]).text
                sampling = resolve(
                    temperature=args.temperature, top_p=args.top_p, max_tokens=max_tokens, seed=i
                )
                s.submit(GenerateRequest(f"r{i}", text, sampling))
            while s.waiting or any(state.is_prefilling for state in s.running):
                s.step()
            produced, steps, started = 0, 0, time.perf_counter()
            decoding[0] = 0.0
            # Per step: (tokens decoded, tokens delivered, decode s, whole step s).
            trace: list[tuple[int, int, float, float]] = []
            while s.has_work():
                decoded[0], before, step_started = 0, decoding[0], time.perf_counter()
                out = sum(e.tokens for e in s.step() if isinstance(e, Delta))
                step_took = time.perf_counter() - step_started
                trace.append((decoded[0], out, decoding[0] - before, step_took))
                produced += out
                steps += 1
            took = time.perf_counter() - started
            for slot in s.slots:
                backend.seq_rm(slot.id, -1, -1)
            rates[(k, agree)].append(produced / took)
            per_step = (decoding[0] / steps * 1e3, (took - decoding[0]) / steps * 1e3)
            parts[(k, agree)].append(per_step)
            stats = s.stats()
            print(
                f"{model.name} {args.workload} x{args.streams} max_draft {k} agree {agree:d} "
                f"(repeat {rep}): "
                f"{produced / took:.1f} tok/s, {produced} tokens in {steps} steps "
                f"(decode {per_step[0]:.2f} ms, rest {per_step[1]:.2f} ms a step), "
                f"{stats.accepted}/{stats.drafted} drafts confirmed",
                flush=True,
            )
            if args.streams == 1:
                print(by_size(trace), flush=True)
    for (k, agree), values in rates.items():
        median = statistics.median(values)
        decode_ms = statistics.median(d for d, _ in parts[(k, agree)])
        rest_ms = statistics.median(r for _, r in parts[(k, agree)])
        print(
            f"max_draft {k} agree {agree:d}: median {median:.1f} tok/s of {len(values)}, "
            f"decode {decode_ms:.2f} ms and rest {rest_ms:.2f} ms a step"
        )
    backend.close()
    return 0


def by_size(trace: list[tuple[int, int, float, float]]) -> str:
    """One stream's steps grouped by tokens decoded (1 = no draft): how many, the decode and
    the rest (sampling, verifying, drafting, the scheduler) per step in ms, tokens delivered
    per step; then what the drafted steps bought, in this run's own prices: their time against
    the same tokens at this run's mean one-token step each, and the same for the whole answer.
    The box's swing moves both prices alike, so the ratios tell whether drafting paid here."""
    groups: dict[str, list[tuple[int, int, float, float]]] = {}
    for step in trace:
        n = step[0]
        key = str(n) if n <= 4 else "5-8" if n <= 8 else "9+"
        groups.setdefault(key, []).append(step)
    lines = []
    for key in sorted(groups, key=lambda g: int(g.split("-")[0].rstrip("+"))):
        steps = groups[key]
        dec = statistics.fmean(d for _, _, d, _ in steps) * 1e3
        rest = statistics.fmean(t - d for _, _, d, t in steps) * 1e3
        out = statistics.fmean(o for _, o, _, _ in steps)
        lines.append(
            f"  {key:>4} tokens: {len(steps):5d} steps, decode {dec:6.2f} ms, rest {rest:5.2f} "
            f"ms, {out:.2f} tokens out a step"
        )
    singles = [t for n, o, _, t in trace if n == 1 and o == 1]
    drafted = [(o, t) for n, o, _, t in trace if n > 1]
    if singles and drafted:
        single = statistics.fmean(singles)  # the mean: the run's total is priced in means
        spent = sum(t for _, t in drafted)
        bought = sum(o for o, _ in drafted)
        whole = sum(o for _, o, _, _ in trace) * single / sum(t for *_, t in trace)
        lines.append(
            f"  drafted steps: {bought} tokens in {spent:.2f} s, at one-token steps "
            f"({single * 1e3:.2f} ms mean) {bought * single:.2f} s: "
            f"{bought * single / spent:.3f}x; the whole run {whole:.3f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
