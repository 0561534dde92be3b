"""Contenders request by request (issue 18, docs/benchmarks.md): every contender's server up at
once, and one request (or one burst of --clients) at a time to each in turn, the order rotating
every round, every arm given the same prompts and seeds in a round. Each round gives one ratio
per arm against the first arm, taken a few seconds apart.

Why: the turns of bench/speculative.py (a fresh server per contender, 30 s each, alternating)
swing with the box: one contender's own turns spread up to 28% at one client, and identical
work in one process (the same 16 streams' steps, nothing drafted) took 74 to 108 ms a step
from one 15-second run to the next (bench.spec_inproc). A gap of 1-3% cannot be told from
that with a few turns; many pairs of requests close together can.

    .venv/bin/python -m bench.paired --model smollm2 --workload chat --mode t0.7-p0.95 \
        --arms llmd,llama-server,llama-server@top_k0,llmd-nospec --rounds 30

An arm is a bench/speculative.py contender, with `@top_k0` for a llama-server asked for llmd's
distribution (top_k 0, min_p 0), `@invariant` for llmd with `engine.batch_invariant`,
`@fa-on` / `@fa-off` for either with flash attention set,
`@tbN` for N prompt threads; every arm has a server of its own (a shared one would find the
round's prompt cached for its second arm). Per arm: output
tokens per second of each request or burst (tokens over its wall time, the first token's wait
in it, as bench/speculative.py's out tok/s), the median, and against the first arm the median
of the rounds' ratios and their geometric mean with a 95% interval (from the spread of the
log ratios). The same for the time per output token after the first (TPOT), which an
answer's length and its prompt's wait do not move, and for the wait for the first token
(TTFT), which drafting cannot shorten: together they say how much of a ratio is decode.
Results: bench/results/paired-<date>.json and .md beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
import urllib.error
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, NamedTuple

from bench.daemon import ROOT, get
from bench.harness import NAMED_MODELS, PEER_BIN, Server, Setup, log, omp_policy, start
from bench.loadstats import RequestResult
from bench.report import machine_info, versions, write_results
from bench.spec_report import metric_sum
from bench.spec_texts import MAX_TOKENS, WORKLOADS
from bench.speculative import (
    ACCEPTED,
    DRAFTED,
    FLASH_ATTN,
    MODES,
    Contender,
    contenders,
    drive,
    sampling_body,
    spec_types,
)
from llmd.gguf import read_gguf


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.paired", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help=f"{', '.join(NAMED_MODELS)} or a GGUF")
    p.add_argument("--workload", default="chat", choices=WORKLOADS)
    p.add_argument("--mode", default="t0.7-p0.95", choices=list(MODES))
    p.add_argument(
        "--arms",
        default="llmd,llama-server,llama-server@top_k0",
        help="comma list of bench/speculative.py contenders, llama-server@top_k0 for a "
        "llama-server sampling llmd's distribution, @tbN for N prompt threads (steps of "
        "more than one token) in that arm only; ratios are against the first",
    )
    p.add_argument("--clients", type=int, default=1, help="requests at once in a burst")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--max-tokens", type=int, default=0, help="0: the workload's own")
    p.add_argument("--threads", type=int, default=1, help="decode threads, every contender")
    p.add_argument("--threads-batch", type=int, default=2, help="prompt threads, every contender")
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--parallel", type=int, default=16, help="slots (llmd and llama-server -np)")
    p.add_argument("--bin", type=Path, default=PEER_BIN, help="llama-server's folder")
    p.add_argument("--json", type=Path, help="default bench/results/paired-<date>.json")
    args = p.parse_args(argv)
    args.model_path = NAMED_MODELS.get(args.model, Path(args.model))
    if not args.model_path.is_file():
        p.error(f"no model file {args.model_path}")
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.max_tokens = args.max_tokens or MAX_TOKENS[args.workload]
    args.llama_cpp_bin = str(args.bin)  # for report.versions
    return args


class Arm(NamedTuple):
    contender: Contender
    sampling: str  # "default", or "top_k0" for a llama-server drawing llmd's distribution
    threads_batch: int | None  # this arm's own prompt (and multi-token step) threads
    flash_attn: str | None  # "on" or "off" for this arm, None for the contender's own
    invariant: bool = False  # llmd with engine.batch_invariant


def _arm(name: str, available: dict[str, Contender]) -> Arm:
    """`contender[@top_k0][@tbN][@fa-on|@fa-off][@invariant]`: @top_k0 only for a
    llama-server, @invariant (engine.batch_invariant) only for llmd, @tbN and flash attention
    for any."""
    contender, *options = name.split("@")
    if contender not in available:
        raise SystemExit(f"bench.paired: unknown contender {contender}")
    sampling, threads_batch, flash_attn, invariant = "default", None, None, False
    for option in options:
        if option == "top_k0" and available[contender].server != "llmd":
            sampling = "top_k0"
        elif option.startswith("tb") and option[2:].isdigit() and int(option[2:]) > 0:
            threads_batch = int(option[2:])
        elif option in ("fa-on", "fa-off"):
            flash_attn = option[3:]
        elif option == "invariant" and available[contender].server == "llmd":
            invariant = True
        else:
            raise SystemExit(
                f"bench.paired: {name}: @{option}? (@top_k0 for a llama-server, @invariant "
                "for llmd, @tbN and @fa-on / @fa-off for any)"
            )
    return Arm(available[contender], sampling, threads_batch, flash_attn, invariant)


def _counters(server: Server, contender: Contender) -> tuple[float, float]:
    """llmd's drafted and accepted tokens so far (0 for a peer, or when /metrics fails)."""
    if contender.server != "llmd":
        return 0.0, 0.0
    try:
        text = get(server.daemon.url + "/metrics", timeout=10).decode()
    except (urllib.error.URLError, OSError):
        return 0.0, 0.0
    drafted = metric_sum(text, DRAFTED, server.model) or 0.0
    return drafted, metric_sum(text, ACCEPTED, server.model) or 0.0


def _ratio_stats(pairs: list[float]) -> dict[str, Any]:
    """The median of paired ratios, their geometric mean and its 95% interval."""
    logs = [math.log(x) for x in pairs]
    mean = statistics.fmean(logs)
    half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    return {
        "median": statistics.median(pairs),
        "geomean": math.exp(mean),
        "low": math.exp(mean - half),
        "high": math.exp(mean + half),
        "ahead": sum(x >= 1.0 for x in pairs),
    }


def _tpot_ms(result: RequestResult) -> float | None:
    """Time per output token after the first, in ms (None for a one-token answer)."""
    if result.completion_tokens < 2 or result.ttft_s is None or result.e2e_s is None:
        return None
    return (result.e2e_s - result.ttft_s) / (result.completion_tokens - 1) * 1e3


def _values(rounds: list[dict[str, Any]], key: str, arm: str) -> list[float]:
    return [r[key][arm] for r in rounds if r.get(key, {}).get(arm)]


def _pairs(rounds: list[dict[str, Any]], key: str, arm: str, first: str) -> list[float]:
    """Each round's `key` of `arm` over the first arm's (rounds that have both)."""
    return [
        r[key][arm] / r[key][first]
        for r in rounds
        if r.get(key, {}).get(first) and r.get(key, {}).get(arm)
    ]


def summarize(rounds: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, Any]]:
    """Per arm: its rates, and against the first arm the rounds' ratios (first arm ÷ this) of
    output tokens per second and of time per output token (this ÷ first arm: above 1 the
    first arm's tokens came faster), each pair from the same round."""
    out: dict[str, dict[str, Any]] = {}
    first = arms[0]
    for arm in arms:
        rates = [r["rates"][arm] for r in rounds if r["rates"].get(arm)]
        pairs = [
            r["rates"][first] / r["rates"][arm]
            for r in rounds
            if r["rates"].get(first) and r["rates"].get(arm)
        ]
        tpots = _values(rounds, "tpot_ms", arm)
        tpot_pairs = _pairs(rounds, "tpot_ms", arm, first)
        ttfts = _values(rounds, "ttft_ms", arm)
        ttft_pairs = _pairs(rounds, "ttft_ms", arm, first)
        row: dict[str, Any] = {"rounds": len(rates), "median_tok_s": None, "ratio_median": None}
        if rates:
            row["median_tok_s"] = statistics.median(rates)
            row["min_tok_s"], row["max_tok_s"] = min(rates), max(rates)
        row["median_tpot_ms"] = statistics.median(tpots) if tpots else None
        row["median_ttft_ms"] = statistics.median(ttfts) if ttfts else None
        if pairs and arm != first:
            stats = _ratio_stats(pairs)
            row.update(
                ratio_median=stats["median"],
                ratio_geomean=stats["geomean"],
                ratio_low=stats["low"],
                ratio_high=stats["high"],
                rounds_ahead=stats["ahead"],
            )
        if tpot_pairs and arm != first:
            row["tpot_ratio"] = _ratio_stats(tpot_pairs)
        if ttft_pairs and arm != first:
            row["ttft_ratio"] = _ratio_stats(ttft_pairs)
        out[arm] = row
    return out


def report(head: dict[str, Any], summary: dict[str, dict[str, Any]], arms: list[str]) -> str:
    lines = [
        f"# Paired requests, {head['date']}",
        "",
        f"- command: `{head['command']}`",
        f"- {head['model']}: {head['workload']}, {head['mode']}, {head['clients']} client(s), "
        f"{head['rounds']} rounds",
        "",
        f"| arm | median tok/s (range) | {arms[0]} ÷ arm: median of rounds | geomean (95%) "
        f"| rounds ahead | TPOT ms | TPOT arm ÷ {arms[0]}: geomean (95%) | TTFT ms "
        f"| TTFT arm ÷ {arms[0]} | accepted/drafted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        s = summary[arm]
        rate = (
            f"{s['median_tok_s']:.1f} ({s['min_tok_s']:.1f}-{s['max_tok_s']:.1f})"
            if s["median_tok_s"]
            else "-"
        )
        if s["ratio_median"] is None:
            ratio = geo = ahead = "-"
        else:
            ratio = f"{s['ratio_median']:.3f}x"
            geo = f"{s['ratio_geomean']:.3f}x ({s['ratio_low']:.3f}-{s['ratio_high']:.3f})"
            ahead = f"{s['rounds_ahead']} of {s['rounds']}"
        tpot = f"{s['median_tpot_ms']:.1f}" if s.get("median_tpot_ms") else "-"
        t = s.get("tpot_ratio")
        tpot_geo = f"{t['geomean']:.3f}x ({t['low']:.3f}-{t['high']:.3f})" if t else "-"
        ttft = f"{s['median_ttft_ms']:.0f}" if s.get("median_ttft_ms") else "-"
        f_ = s.get("ttft_ratio")
        ttft_geo = f"{f_['geomean']:.3f}x ({f_['low']:.3f}-{f_['high']:.3f})" if f_ else "-"
        drafts = head["drafts"].get(arm)
        shown = f"{drafts[1]:.0f}/{drafts[0]:.0f}" if drafts and drafts[0] else "-"
        lines.append(
            f"| {arm} | {rate} | {ratio} | {geo} | {ahead} | {tpot} | {tpot_geo} | {ttft} "
            f"| {ttft_geo} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server_bin = args.bin / "llama-server"
    available = contenders(spec_types(server_bin) if server_bin.is_file() else [])
    arms = {name: _arm(name, available) for name in args.arm_list}
    has_template = "tokenizer.chat_template" in read_gguf(args.model_path).metadata
    endpoint = "chat" if has_template else "completions"
    out = args.json or ROOT / "bench" / "results" / f"paired-{time.strftime('%Y-%m-%d')}.json"
    head: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "versions": versions(args),
        "command": "python -m bench.paired " + " ".join(argv or sys.argv[1:]),
        "model": args.model_path.name,
        "workload": args.workload,
        "mode": args.mode,
        "clients": args.clients,
        "rounds": args.rounds,
        "omp_wait_policy": omp_policy(),
        "drafts": {},
    }
    rounds: list[dict[str, Any]] = []
    servers: dict[str, Server] = {}
    with TemporaryDirectory(prefix="llmd-bench-paired-") as tmp:
        try:
            for name, arm in arms.items():
                s = Setup(
                    model=args.model_path, threads=args.threads,
                    threads_batch=arm.threads_batch or args.threads_batch,
                    ctx=args.ctx, parallel=args.parallel, max_queue=32,
                    work=Path(tmp) / name.replace("@", "-"), llama_server=server_bin,
                    lcp_python=None,
                )  # fmt: skip
                s.work.mkdir(parents=True)
                log(f"starting {name}")
                c, flags, toml = arm.contender, arm.contender.flags, arm.contender.toml
                if arm.flash_attn:
                    flags = (*flags, "-fa", arm.flash_attn)
                    toml = FLASH_ATTN.format(arm.flash_attn) + toml
                if arm.invariant:
                    toml = "batch_invariant = true\n" + toml
                servers[name] = start(c.server, s, flags, toml)
            for server in servers.values():  # a warm-up each, then the rounds
                warm = sampling_body("greedy", "default")
                asyncio.run(drive(server, endpoint, args.workload, 1, warm, "warmup", 1, 0.0, 16))
            before = {n: _counters(servers[n], a.contender) for n, a in arms.items()}
            names = list(arms)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                rates: dict[str, float] = {}
                tpot_ms: dict[str, float] = {}
                ttft_ms: dict[str, float] = {}
                counts: dict[str, int] = {}
                for name in order:
                    body = sampling_body(args.mode, arms[name].sampling)
                    salt = f"{args.model}/{args.mode}/paired{r}/c{args.clients}"
                    started = time.perf_counter()
                    results, _, _ = asyncio.run(
                        drive(servers[name], endpoint, args.workload, args.clients,
                              body, salt, 1, 0.0, args.max_tokens)
                    )  # fmt: skip
                    wall = time.perf_counter() - started
                    tokens = sum(x.completion_tokens for x in results if x.ok)
                    counts[name] = tokens
                    if all(x.ok for x in results):
                        rates[name] = tokens / wall
                        tpots = [_tpot_ms(x) for x in results]
                        if all(tpots):
                            tpot_ms[name] = statistics.fmean(t for t in tpots if t)
                        ttfts = [x.ttft_s for x in results]
                        if all(t is not None for t in ttfts):
                            ttft_ms[name] = statistics.fmean(t or 0.0 for t in ttfts) * 1e3
                rounds.append(
                    {"round": r, "order": order, "rates": rates, "tpot_ms": tpot_ms,
                     "ttft_ms": ttft_ms, "tokens": counts}
                )  # fmt: skip
                shown = ", ".join(f"{n} {rates.get(n, 0.0):.1f}" for n in names)
                log(f"round {r + 1}/{args.rounds}: {shown} tok/s")
            after = {n: _counters(servers[n], a.contender) for n, a in arms.items()}
            head["drafts"] = {
                n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in arms
            }
        finally:
            for server in servers.values():
                server.stop()
    summary = summarize(rounds, names)
    text = report(head, summary, names)
    write_results(out, "paired", args, **head, summary=summary, per_round=rounds)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
