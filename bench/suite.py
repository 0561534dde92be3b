"""Side-by-side benchmark: llmd against the servers a user would pick instead (issue 3).

Contenders, taking turns level by level, each alone on the machine, all on the same model file,
thread counts and OpenMP policy:
- llmd: the real daemon over HTTP (continuous batching, prefix reuse);
- llama-server: llama.cpp's own server, `-np PARALLEL`, built from the llama.cpp sources inside
  the llama-cpp-python sdist that llmd uses (scripts/bench builds it);
- llama-cpp-python: its bundled server (`python -m llama_cpp.server`), which serves one request
  at a time, in its own virtualenv;
- serial (optional): llama-server with one slot, i.e. plain one-request-at-a-time serving on
  llama.cpp's own loop.

Workloads: raw engine speed (llama-bench pp512/tg128; llmd's engine in-process, no HTTP), a
concurrency sweep (~150-token prompts, 128 output tokens; level 1 is the one-stream workload),
16 clients sharing one 1,000-token system prompt, multi-turn chat, and an overload run.
Each workload is warmed up and repeated; medians and the spread of the repeats are reported,
and every run is kept in the JSON. Machines are noisy: compare ratios within one run.

This file is the command line (scripts/bench); bench.harness starts and stops the contenders,
bench.workloads says what is measured and runs it, bench.report sums it up and writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.daemon import ROOT
from bench.harness import CONTENDERS, DEFAULT_CONTENDERS, NAMED_MODELS, log, omp_policy
from bench.report import ResultsFile, machine_info, versions
from bench.workloads import WORKLOADS, bench_model, estimate_seconds, guess_speeds, plan


def _models(values: list[str]) -> list[Path]:
    paths: list[Path] = []
    for v in values or ["smollm2"]:
        if v == "all":
            paths += NAMED_MODELS.values()
        elif v in NAMED_MODELS:
            paths.append(NAMED_MODELS[v])
        else:
            paths.append(Path(v))
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"bench: no model file {p}")
    return paths


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names_option(
    p: argparse.ArgumentParser, flag: str, names: Sequence[str], default: Sequence[str], tail: str
) -> None:
    """An option taking a comma list of `names`."""
    help_ = f"comma list of {', '.join(names)}{tail}"
    p.add_argument(flag, type=lambda t: t.split(","), default=list(default), help=help_)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="GGUF path, or smollm2 (default), gemma3, all; repeatable",
    )
    _names_option(p, "--contenders", CONTENDERS, DEFAULT_CONTENDERS, "")
    p.add_argument(
        "--quick",
        action="store_true",
        help="end-to-end check: levels 1,4, one repeat, short outputs (~5 min)",
    )
    p.add_argument("--repeats", type=int, help="measured runs per workload (default 3; quick 1)")
    p.add_argument("--levels", type=_levels, help="sweep levels (default 1,4,16)")
    _names_option(p, "--workloads", WORKLOADS, WORKLOADS, " (default all)")
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, cores - 1),
        help="decode threads, every contender (default: llmd's automatic choice)",
    )
    p.add_argument(
        "--threads-batch",
        type=int,
        default=cores,
        help="prompt threads, every contender (default: llmd's automatic choice)",
    )
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--parallel", type=int, default=16, help="slots (llmd and llama-server -np)")
    p.add_argument("--max-queue", type=int, default=32, help="llmd's queue (overload workload)")
    p.add_argument("--llama-cpp-bin", help="folder with llama-server and llama-bench")
    p.add_argument("--lcp-venv", help="venv with llama-cpp-python[server]")
    p.add_argument("--plot-python", help="python with matplotlib, for the PNG plots")
    p.add_argument(
        "--endpoint",
        choices=("chat", "completions"),
        help="default: chat if the GGUF has a chat template, else completions",
    )
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'busy')")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results")
    p.add_argument("--estimate", action="store_true", help="print the estimated duration, exit")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.levels is None:
        # 2, 8 and 32 are left out by default to keep a full run of one model under 25
        # minutes on 2 cores (~19 estimated); --levels 1,2,4,8,16,32 runs the whole sweep.
        args.levels = [1, 4] if args.quick else [1, 4, 16]
    bad = set(args.contenders) - set(CONTENDERS) | set(args.workloads) - set(WORKLOADS)
    if bad:
        p.error(f"unknown contenders or workloads: {', '.join(sorted(bad))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = _models(args.model)
    workloads = plan(args)
    for model in models:
        eta = estimate_seconds(workloads, args.contenders, args.repeats, *guess_speeds(model))
        log(
            f"{model.name}: estimated {eta / 60 + 1.5:.0f} min (from the file size; refined "
            "after llama-bench)"
        )
    if args.estimate:
        return 0
    results: dict[str, Any] = {
        "tool": "llmd-bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "note": args.note,
        "versions": versions(args),
        "command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "threads": args.threads,
            "threads_batch": args.threads_batch,
            "omp_wait_policy": omp_policy(),
            "ctx_per_seq": args.ctx,
            "parallel": args.parallel,
            "max_queue": args.max_queue,
            "repeats": args.repeats,
            "levels": ",".join(map(str, args.levels)),
            "quick": args.quick,
            "contenders": ",".join(args.contenders),
        },
        "models": [],
    }
    file = ResultsFile(args.out, results, args.quick)
    log(f"results go to {file.path} (written after every measurement)")
    for model in models:
        results["models"].append(bench_model(args, model, file.save_partial))
    report = file.finish(args.plot_python)
    print(report)
    log(f"results: {file.path} and {file.path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
