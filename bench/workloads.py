"""What a benchmark measures, and running it: the workloads, their levels, each contender's turns.

Workloads: raw engine speed (llama-bench pp512/tg128; llmd's engine in-process, no HTTP), a
concurrency sweep (~150-token prompts, 128 output tokens; level 1 is the one-stream workload),
16 clients sharing one 1,000-token system prompt, multi-turn chat, and an overload run.
Each workload is warmed up and repeated with fresh prompts (bench.loadgen drives the clients);
`bench_model` runs every contender on one model, taking turns level by level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from bench.daemon import ROOT
from bench.harness import (
    CONTENDERS,
    SERIAL,
    MemoryWatch,
    Setup,
    binary,
    lcp_python,
    log,
    omp_policy,
    start,
    take_turn,
)
from bench.loadgen import LoadConfig, run_load
from bench.loadstats import RunResult
from bench.report import ratios, summarize_runs

WORKLOADS = ("sweep", "shared_prefix", "multiturn", "overload")


@dataclass
class Workload:
    """One workload: loadgen settings per level, which contenders run it, and how often."""

    name: str
    title: str
    levels: list[int]
    params: dict[str, Any]
    contenders: tuple[str, ...] = CONTENDERS
    serial_levels: list[int] | None = None
    requests: Callable[[int], int] = field(default=lambda c: max(c, 2))
    once: bool = False
    """Measured once, whatever --repeats says: it checks behaviour (refusals), not speed."""

    def repeats(self, default: int) -> int:
        return 1 if self.once else default

    def levels_for(self, contender: str) -> list[int]:
        if contender in SERIAL and self.serial_levels is not None:
            return [c for c in self.levels if c in self.serial_levels]
        return self.levels


def plan(args: argparse.Namespace) -> list[Workload]:
    quick = args.quick
    out = 32 if quick else 128
    stream = {"prompt_tokens": 150, "max_tokens": out, "ignore_eos": True}
    capacity = args.parallel + args.max_queue
    every = [
        Workload(
            "sweep",
            "Concurrency sweep (~150-token prompts, 128 output tokens; level 1 = one stream)",
            args.levels,
            stream,
            serial_levels=[c for c in args.levels if c in (1, 16)] or args.levels[:1],
        ),
        Workload(
            "shared_prefix",
            f"{4 if quick else 16} clients sharing one 1,000-token system prompt",
            [4 if quick else 16],
            {
                "prompt_tokens": 50,
                "max_tokens": 16 if quick else 32,
                "system_prompt_tokens": 1000,
                "ignore_eos": True,
            },
            requests=lambda c: c,
        ),
        Workload(
            "multiturn",
            f"Multi-turn chat ({2 if quick else 4} conversations x {3 if quick else 4} turns "
            "over a ~300-token system prompt)",
            [2 if quick else 4],
            {
                "mode": "multiturn",
                "turns": 3 if quick else 4,
                "system_prompt_tokens": 300,
                "prompt_tokens": 40,
                "max_tokens": 16 if quick else 64,
                "ignore_eos": True,
            },
        ),
        Workload(
            "overload",
            f"Overload ({2 * capacity} clients at once; llmd holds {args.parallel} running + "
            f"{args.max_queue} queued)",
            [2 * capacity],
            {"prompt_tokens": 50, "max_tokens": 8 if quick else 16, "ignore_eos": True},
            # llama-cpp-python has no queue limit and serves one at a time: it would only
            # show a very long wait. llama-server shows what "no limit" does to latency.
            contenders=("llmd", "llama-server"),
            requests=lambda c: c,
            once=True,
        ),
    ]
    return [wl for wl in every if wl.name in args.workloads]


def guess_speeds(model: Path) -> tuple[float, float]:
    """Decode and prompt tokens/s guessed from the file's size (SmolLM2's on 2 cores), until
    llama-bench measures them."""
    return 80.0 * 98e6 / model.stat().st_size, 270.0


def estimate_seconds(
    workloads: list[Workload], contenders: list[str], repeats: int, tg: float, pp: float
) -> float:
    """A rough wall-clock estimate of the HTTP workloads from decode and prompt speeds."""
    total = 0.0
    for wl in workloads:
        for c in contenders:
            if c not in wl.contenders:
                continue
            for level in wl.levels_for(c):
                n = wl.requests(level)
                turns = wl.params.get("turns", 1)
                if wl.params.get("mode") == "multiturn":
                    n = level * turns
                out = n * wl.params["max_tokens"]
                prompt = n * (wl.params["prompt_tokens"] + 30)
                # Measured on 2 cores: one stream ~0.9x tg128 through HTTP, 16 batched streams
                # 0.7-0.85x (prompts read meanwhile), one-at-a-time servers ~0.6x.
                speed = tg * (0.6 if c in SERIAL else 0.9 if level == 1 else 0.8)
                warmup = wl.params["max_tokens"] / tg + wl.params["prompt_tokens"] / pp
                total += (out / speed + prompt / pp + 1) * wl.repeats(repeats) + warmup
                total += 3  # a server started for this level alone (measured: 2-3 s)
    return total + 15 * len(contenders)


# -- raw engine speed ------------------------------------------------------------------------


def llama_bench(program: Path, model: Path, threads: list[int], repeats: int) -> dict[str, Any]:
    """llama-bench pp512 and tg128 at each thread count; median and spread of its samples."""
    argv = [str(program), "-m", str(model), "-p", "512", "-n", "128", "-o", "json"]
    argv += ["-t", ",".join(str(t) for t in sorted(set(threads))), "-r", str(repeats)]
    omp_policy()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)
    out: dict[str, Any] = {"argv": argv, "results": {}}
    for row in rows:
        test = "pp512" if row["n_prompt"] else "tg128"
        samples = [float(x) for x in row["samples_ts"]]
        out["results"][f"{test}_t{row['n_threads']}"] = {
            "median": statistics.median(samples),
            "spread": [min(samples), max(samples)],
            "samples": samples,
        }
        out["build"] = f"{row.get('build_number')} ({row.get('build_commit')})"
    return out


def llmd_engine(s: Setup, streams: int, tokens: int) -> dict[str, Any]:
    """llmd's backend and scheduler in one process: no HTTP, no IPC (and the model's EOG ids);
    bench/engine_speed.py, in a process of its own with the contenders' OpenMP policy."""
    argv = [sys.executable, "-m", "bench.engine_speed", str(s.model), str(s.threads)]
    argv += [str(s.threads_batch), str(max(s.parallel, streams)), str(streams), str(tokens)]
    omp_policy()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"llmd engine run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- HTTP workloads --------------------------------------------------------------------------


class Endpoint(Protocol):
    """What a workload runs against: a started `Server`, or a test's daemon."""

    label: str
    model: str
    memory: MemoryWatch

    @property
    def url(self) -> str: ...


def measure(
    server: Endpoint, wl: Workload, level: int, repeats: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Warm up, then run one workload level `repeats` times with fresh prompts each time."""
    kw = dict(wl.params)
    kw["concurrency"] = level
    kw["requests"] = wl.requests(level)
    kw["extra_body"] = extra
    base = LoadConfig(url=server.url, model=server.model, label=server.label, warmup=0)
    cfg = {**asdict(base), **kw}
    warm = {**cfg, "mode": "stream", "concurrency": 1, "requests": 1, "seed_salt": "warmup"}
    asyncio.run(run_load(LoadConfig(**warm)))
    server.memory.reset()
    runs: list[dict[str, Any]] = []
    for i in range(repeats):
        # Fresh prompts per level and repeat (the same ones for every contender): a run must
        # not find an earlier run's prompts in a prefix cache (with the level left out, the
        # 16-client level re-sent the 4-client level's prompts, and a server that kept them
        # read 4 of 16 prompts for free). The system prompt stays shared.
        salt = f"c{level}/r{i}"
        result: RunResult = asyncio.run(run_load(LoadConfig(**{**cfg, "seed_salt": salt})))
        runs.append(asdict(result))
    return {
        "level": level,
        "summary": summarize_runs(runs),
        "peak_rss_bytes": server.memory.peak(),
        "runs": runs,
    }


# -- one model, every contender -----------------------------------------------------------


def bench_model(
    args: argparse.Namespace, model: Path, save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Every contender on one model; `save` gets the partial result after each measurement,
    so an interrupted run keeps what it measured."""
    workloads = plan(args)
    with tempfile.TemporaryDirectory(prefix="llmd-bench-") as tmp:
        s = Setup(
            model=model,
            threads=args.threads,
            threads_batch=args.threads_batch,
            ctx=args.ctx,
            parallel=args.parallel,
            max_queue=args.max_queue,
            work=Path(tmp),
            llama_server=binary(args.llama_cpp_bin, "llama-server"),
            lcp_python=lcp_python(args.lcp_venv),
        )
        out: dict[str, Any] = {
            "model": {"path": str(model), "name": model.name, "bytes": model.stat().st_size},
            "raw": {},
            "workloads": {},
            "servers": {},
        }
        started = time.monotonic()
        tg, pp = _llama_bench(args, s, out)
        eog, has_template = _llmd_engine(args, s, out)
        # A model without a chat template in its GGUF (Gemma-3-270M base) would get each
        # server's own fallback template, i.e. different prompts: use the completions
        # endpoint, where every contender reads the same text.
        endpoint = args.endpoint or ("chat" if has_template else "completions")
        out["endpoint"] = endpoint
        for wl in workloads:
            wl.params["endpoint"] = endpoint
        eta = estimate_seconds(workloads, args.contenders, args.repeats, tg, pp)
        log(f"{model.name}: HTTP workloads, estimated {eta / 60:.0f} min")
        # llama-cpp-python's server has no ignore_eos: a bias against end-of-generation tokens
        # keeps its outputs as long as the others'.
        lcp_extra = {"logit_bias": {str(t): -100.0 for t in eog}}
        for wl in workloads:
            entry = out["workloads"].setdefault(
                wl.name, {"title": wl.title, "params": wl.params, "results": {}}
            )
            for label, level in turns(wl, args.contenders):
                spent = (time.monotonic() - started) / 60
                log(f"{model.name}: {label} {wl.name} c={level} x{args.repeats} ({spent:.1f} min)")
                extra = lcp_extra if label == "llama-cpp-python" else {}
                server = start(label, s)
                out["servers"].setdefault(
                    label, {"argv": server.argv, "idle_rss_bytes": server.memory.now()}
                )
                repeats = wl.repeats(args.repeats)
                turn = partial(measure, wl=wl, level=level, repeats=repeats, extra=extra)
                result = take_turn(server, turn)
                entry["results"].setdefault(label, []).append(result)
                save(out)
                s_ = result["summary"]
                log(
                    f"  {s_.get('output_tokens_per_s', 0):.1f} out tok/s, TTFT p50 "
                    f"{s_.get('ttft_ms.p50', 0):.0f} ms, {s_['errors']} errors, "
                    f"{s_['refusals']} refused"
                )
        for label, server_out in out["servers"].items():
            server_out["peak_rss_bytes"] = max(
                r["peak_rss_bytes"]
                for wl_out in out["workloads"].values()
                for r in wl_out["results"].get(label, [])
            )
        out["elapsed_s"] = time.monotonic() - started
        out["estimated_s"] = eta
    out["ratios"] = ratios(out)
    return out


def turns(wl: Workload, contenders: list[str]) -> list[tuple[str, int]]:
    """(contender, level) in the order they run: level by level, each contender on a server
    started for it alone, the one to go first rotating, so that a machine slowing down during
    the run slows every contender alike. (Run one after another, a host slowing down while llmd
    ran once cost it 17% at low concurrency, docs/benchmarks.md.)"""
    runs = [label for label in contenders if label in wl.contenders]
    levels = sorted({level for label in runs for level in wl.levels_for(label)})
    return [
        (label, level)
        for k, level in enumerate(levels)
        for label in runs[k % len(runs) :] + runs[: k % len(runs)]
        if level in wl.levels_for(label)
    ]


def _llama_bench(args: argparse.Namespace, s: Setup, out: dict[str, Any]) -> tuple[float, float]:
    """llama-bench's tg128 and pp512 (tokens/s) when it is built, else a guess from the file
    size; they size the estimate of the HTTP workloads."""
    bench_bin = binary(args.llama_cpp_bin, "llama-bench")
    if bench_bin is None:
        return guess_speeds(s.model)
    log(f"{s.model.name}: llama-bench pp512/tg128 ...")
    lb = llama_bench(bench_bin, s.model, [s.threads, s.threads_batch], max(args.repeats, 3))
    out["raw"]["llama_bench"] = lb
    speeds = lb["results"]
    return speeds[f"tg128_t{s.threads}"]["median"], speeds[f"pp512_t{s.threads_batch}"]["median"]


def _llmd_engine(args: argparse.Namespace, s: Setup, out: dict[str, Any]) -> tuple[list[int], bool]:
    """llmd's engine speed in-process, into out["raw"]; the model's end-of-generation ids and
    whether its GGUF has a chat template."""
    log(f"{s.model.name}: llmd engine in-process (no HTTP) ...")
    engines = [
        llmd_engine(s, 16 if i == 0 else 1, 32 if args.quick else 128)
        for i in range(1 if args.quick else 3)
    ]
    eog, has_template = engines[0]["eog"], engines[0]["chat_template"]
    for e in engines:
        e.pop("eog")
        e.pop("chat_template")
    out["raw"]["llmd_engine"] = {
        key: {
            "median": statistics.median(e[key] for e in engines if key in e),
            "runs": [e[key] for e in engines if key in e],
        }
        for key in engines[0]
    }
    return eog, has_template
