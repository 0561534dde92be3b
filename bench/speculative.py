"""Speculative decoding and sampled speed side by side (issue 18, docs/benchmarks.md): llmd with
speculation on (its default) and off, against llama-server without speculation and with each of
its n-gram modes, on the same model file, threads and OpenMP policy.

Workloads (bench/spec_texts.py): a code edit, answering by quoting a report, a table to JSON,
and free chat; each request with its own names and numbers. Levels: clients sending requests
back to back (each at least --requests, and new ones until --duration has passed). Modes:
greedy, temperature 1, temperature 0.7 with top_p 0.95; a llama-server contender samples once
at its defaults (top_k 40, min_p 0.05 where the request says nothing) and once with top_k 0,
min_p 0 (the distribution OpenAI's parameters mean, llmd's). Measured per run: output tok/s
(from usage), TPOT and TTFT p50, and for llmd the accepted/drafted tokens from /metrics when
the daemon counts them. For every (model, workload, level) each contender takes a turn on a
server started for it (a peer once per sampling), the first place rotating; every mode runs in
that turn, all contenders reading the same prompts.

    scripts/bench-speculative [--models smollm2,gemma3] [--workloads ...] [--levels 1,4,16]
        [--modes greedy,t1,t0.7-p0.95] [--contenders llmd,llmd-nospec,llama-server,ngram]
        [--duration S] [--requests N] [--repeats N] [--quick] [--estimate] [--json OUT]

Results: bench/results/speculative-<date>.json (rewritten after every turn) and a markdown
report beside it, printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import zlib
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp

from bench.daemon import ROOT, get
from bench.harness import NAMED_MODELS, PEER_BIN, Server, Setup, log, omp_policy, start, take_turn
from bench.loadgen import Client, LoadConfig, summarize
from bench.loadstats import RequestResult
from bench.report import machine_info, versions, write_results
from bench.spec_report import (
    EXACT,
    NGRAM_PREFIX,
    START_S,
    cell_seconds,
    copied_fraction,
    markdown_tables,
    metric_sum,
    targets,
    targets_table,
    window_rate,
)
from bench.spec_report import summarize as summarize_cells
from bench.spec_texts import MAX_TOKENS, WORKLOADS, prompt
from llmd.gguf import read_gguf

MODES: dict[str, dict[str, float]] = {
    "greedy": {"temperature": 0.0},
    "t1": {"temperature": 1.0},
    "t0.7-p0.95": {"temperature": 0.7, "top_p": 0.95},
}
PEER_SAMPLING = ("default", "top_k0")
NGRAM_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")
PROMPT_TOKENS = {"code_edit": 690, "extraction": 590, "json": 610, "chat": 30}
"""Prompt lengths with the chat template (SmolLM2; Gemma's within 10%), for the estimate."""
DRAFTED = "llmd_speculative_drafted_tokens_total"
ACCEPTED = "llmd_speculative_accepted_tokens_total"
EMPTY = "stream ended without any content"
"""bench.loadgen's error for an answer without a single content token."""
REQUEST_TIMEOUT = 900.0
SPECULATION_OFF = "[engine.speculative]\nenabled = false\n"
SPECULATION_ALWAYS = "[engine.speculative]\nadaptive = false\n"
"""Every draft found checked (up to max_draft): what the cost model's choices are worth."""
SPECULATION_K = "[engine.speculative]\nmax_draft = {k}\n"
FLASH_ATTN = 'flash_attn = "{}"\n'
"""A key of [engine] (bench.harness puts the lines before any table header there)."""
DRAFT_LIMITS = (4, 16, 32, 64)
SPECULATION_N = "[engine.speculative]\nngram_max = {n}\n"
NGRAM_LONGEST = (4, 8, 12, 16)
QUICK = {
    "models": "smollm2",
    "workloads": "code_edit,chat",
    "levels": "1",
    "modes": "greedy,t1",
    "contenders": "llmd,llmd-nospec,llama-server,llama-server+ngram-mod",
    "peer_sampling": "default,top_k0",
    "repeats": 1,
    "duration": 0.0,
    "requests": 1,
}
FULL = {
    "models": "smollm2,gemma3",
    "workloads": ",".join(WORKLOADS),
    "levels": "1,4,16",
    "modes": ",".join(MODES),
    "contenders": "llmd,llmd-nospec,llama-server,ngram",
    "peer_sampling": ",".join(PEER_SAMPLING),
    "repeats": 3,
    "duration": 30.0,
    "requests": 1,
}


@dataclass(frozen=True)
class Contender:
    name: str
    server: str
    """'llmd' or 'llama-server': which program bench.harness.start runs."""
    flags: tuple[str, ...] = ()
    toml: str = ""


def contenders(spec_types: list[str]) -> dict[str, Contender]:
    """Every contender this llama-server build allows, by name."""
    out = {
        "llmd": Contender("llmd", "llmd"),
        "llmd-nospec": Contender("llmd-nospec", "llmd", toml=SPECULATION_OFF),
        "llmd-always": Contender("llmd-always", "llmd", toml=SPECULATION_ALWAYS),
        "llama-server": Contender("llama-server", "llama-server"),
    }  # fmt: skip
    for k in DRAFT_LIMITS:  # llmd with another max_draft: what longer drafts are worth
        out[f"llmd-k{k}"] = Contender(f"llmd-k{k}", "llmd", toml=SPECULATION_K.format(k=k))
    for n in NGRAM_LONGEST:  # llmd looking up longer n-grams first: fewer drafts from prose
        out[f"llmd-ngram{n}"] = Contender(f"llmd-ngram{n}", "llmd", toml=SPECULATION_N.format(n=n))
    for t in NGRAM_TYPES:
        if t in spec_types:
            out[NGRAM_PREFIX + t] = Contender(NGRAM_PREFIX + t, "llama-server", ("--spec-type", t))
    return out


def spec_types(llama_server: Path) -> list[str]:
    """The `--spec-type` values llama-server's --help lists."""
    done = subprocess.run([str(llama_server), "--help"], capture_output=True, text=True)
    found = re.search(r"--spec-type\s+(\S+)", done.stdout + done.stderr)
    return found.group(1).split(",") if found else []


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench-speculative", description=__doc__.split("\n")[0]
    )
    p.add_argument("--models", help=f"comma list of {', '.join(NAMED_MODELS)} or GGUF paths")
    p.add_argument("--workloads", help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--levels", help="comma list of client counts (default 1,4,16)")
    p.add_argument("--modes", help=f"comma list of {', '.join(MODES)}")
    p.add_argument(
        "--contenders",
        help="comma list of llmd, llmd-nospec, llmd-always, llmd-k4/k16/k32/k64, "
        "llmd-ngram4/8/12/16, "
        "llama-server, "
        f"llama-server+<n-gram type> ({', '.join(NGRAM_TYPES)}), or ngram: every n-gram "
        "type this llama-server has",
    )
    p.add_argument(
        "--peer-sampling",
        help="how llama-server samples in the sampled modes: default (its top_k 40, min_p "
        "0.05), top_k0 (top_k 0, min_p 0: llmd's distribution), or both: default,top_k0",
    )
    p.add_argument("--duration", type=float, help="seconds each client keeps sending (30)")
    p.add_argument("--requests", type=int, help="requests each client sends at least (1)")
    p.add_argument("--repeats", type=int, help="turns of every contender (3; quick 1)")
    p.add_argument("--quick", action="store_true", help="a few minutes' check: " + str(QUICK))
    p.add_argument("--threads", type=int, default=1, help="decode threads, every contender")
    p.add_argument("--threads-batch", type=int, default=2, help="prompt threads, every contender")
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--parallel", type=int, default=16, help="slots (llmd and llama-server -np)")
    p.add_argument("--bin", type=Path, default=PEER_BIN, help="llama-server's folder")
    p.add_argument("--json", type=Path, help="default bench/results/speculative-<date>.json")
    p.add_argument("--plot-python", help="python with matplotlib, for the PNG (spec_plots.py)")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--estimate", action="store_true", help="print the estimated length, exit")
    args = p.parse_args(argv)
    # --quick changes the defaults; options given explicitly still win.
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.model_paths = [NAMED_MODELS.get(m, Path(m)) for m in _list(args.models)]
    args.workload_list = _list(args.workloads)
    args.level_list = [int(x) for x in _list(args.levels)]
    args.mode_list = _list(args.modes)
    args.sampling_list = _list(args.peer_sampling)
    bad = (
        set(args.workload_list) - set(WORKLOADS)
        | set(args.mode_list) - set(MODES)
        | set(args.sampling_list) - set(PEER_SAMPLING)
    )
    if bad:
        p.error(f"unknown workloads, modes or sampling: {', '.join(sorted(bad))}")
    for path in args.model_paths:
        if not path.is_file():
            p.error(f"no model file {path}")
    args.model = ",".join(str(m) for m in args.model_paths)  # for write_results' head
    args.llama_cpp_bin = str(args.bin)  # for report.versions
    return args


def pick_contenders(names: list[str], available: dict[str, Contender]) -> list[Contender]:
    out: list[Contender] = []
    for name in names:
        if name == "ngram":
            out += [c for n, c in available.items() if n.startswith(NGRAM_PREFIX)]
        elif name in available:
            out.append(available[name])
        elif name.startswith(NGRAM_PREFIX):
            log(f"skipped contender {name}: this llama-server has no such --spec-type")
        else:
            raise SystemExit(f"bench-speculative: unknown contender {name}")
    return out


def sampling_body(mode: str, sampling: str) -> dict[str, float]:
    """The request's sampling fields: what an OpenAI client sends for `mode`, and for a peer
    asked for llmd's distribution (`top_k0`) its own truncations turned off."""
    body = dict(MODES[mode])
    if sampling == "top_k0":
        body.update(top_k=0, min_p=0.0, top_p=body.get("top_p", 1.0))
    return body


def arm(contender: Contender, sampling: str) -> str:
    return contender.name + (EXACT if sampling == "top_k0" else "")


@dataclass(frozen=True)
class Turn:
    """What one server, started for it alone, runs: a contender at one sampling, the modes."""

    contender: Contender
    sampling: str
    modes: tuple[str, ...]

    @property
    def name(self) -> str:
        return arm(self.contender, self.sampling)


def plan_turns(chosen: list[Contender], modes: list[str], samplings: list[str]) -> list[Turn]:
    """A turn for llmd (which samples one way), one per sampling for a peer: on a server of its
    own, so the second sampling finds nothing of the first's prompts or n-gram caches, and
    every arm reads the same prompts. Greedy ignores top_k: it runs in a peer's first turn."""
    turns: list[Turn] = []
    for c in chosen:
        if c.server == "llmd":
            turns.append(Turn(c, "default", tuple(modes)))
            continue
        for i, sampling in enumerate(samplings):
            mine = tuple(m for m in modes if m != "greedy" or i == 0)
            if mine:
                turns.append(Turn(c, sampling, mine))
    return turns


# -- one measured run --------------------------------------------------------------------------


async def drive(
    server: Server, endpoint: str, workload: str, level: int, body: dict[str, float],
    salt: str, requests: int, duration: float, max_tokens: int,
) -> tuple[list[RequestResult], list[str], float]:  # fmt: skip
    """`level` clients, each sending requests back to back: at least `requests`, and new ones
    until `duration` seconds have passed. The results, their prompts, and when it started."""
    results: list[RequestResult] = []
    prompts: list[str] = []
    # As bench.loadgen's session: no connection cap, one connection per request.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=REQUEST_TIMEOUT),
    )
    start = time.perf_counter()

    async def client(c: int) -> None:
        i = 0
        while i < requests or time.perf_counter() - start < duration:
            key = f"{salt}/{c}/{i}"
            text = prompt(workload, key)
            extra = {**body, "seed": zlib.crc32(key.encode()) & 0x7FFFFFFF}
            cfg = LoadConfig(
                url=server.url, model=server.model, endpoint=endpoint, max_tokens=max_tokens,
                extra_body=extra, timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            results.append(
                await Client(session, cfg, server.model).send([{"role": "user", "content": text}])
            )
            prompts.append(text)
            i += 1

    async with session:
        await asyncio.gather(*(client(c) for c in range(level)))
    return results, prompts, start


def _scrape(server: Server, contender: Contender) -> tuple[float | None, float | None]:
    """llmd's drafted and accepted token counters so far (None where it has none)."""
    if contender.server != "llmd":
        return None, None
    try:
        text = get(server.daemon.url + "/metrics", timeout=10).decode()
    except (urllib.error.URLError, OSError):
        return None, None
    return metric_sum(text, DRAFTED, server.model), metric_sum(text, ACCEPTED, server.model)


def _delta(after: float | None, before: float | None) -> int | None:
    return None if after is None else int(after - (before or 0.0))


def measure(
    args: argparse.Namespace, turn: Turn, endpoint: str, where: dict[str, Any], server: Server
) -> list[dict[str, Any]]:
    """A turn: a warm-up, then each of its modes on one workload at one level; a cell each."""
    workload, level = where["workload"], where["level"]
    contender = turn.contender
    warm = sampling_body("greedy", "default")
    asyncio.run(drive(server, endpoint, workload, 1, warm, "warmup", 1, 0.0, 16))
    cells: list[dict[str, Any]] = []
    for mode in turn.modes:
        sampling = "default" if mode == "greedy" else turn.sampling
        # The same prompts for every contender; fresh ones per mode and repeat so that
        # no run finds an earlier one's prompts in the server's prefix cache.
        salt = f"{where['model']}/{mode}/r{where['repeat']}/c{level}"
        before = _scrape(server, contender)
        results, prompts, start = asyncio.run(
            drive(server, endpoint, workload, level, sampling_body(mode, sampling), salt,
                  args.requests, args.duration, MAX_TOKENS[workload])
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = _scrape(server, contender)
        cfg = LoadConfig(url=server.url, endpoint=endpoint, concurrency=level)
        run = summarize(cfg, server.model, len(results), results, wall)
        copied = [
            f
            for r, p in zip(results, prompts, strict=True)
            if r.ok and (f := copied_fraction(p, r.text)) is not None
        ]
        answer = next((r.text for r in results if r.ok), "")
        at_limit = sum(r.ok and r.completion_tokens >= MAX_TOKENS[workload] for r in results)
        empty = sum(r.error == EMPTY for r in results)
        cell = {
            **where,
            "mode": mode,
            "arm": arm(contender, sampling),
            "output_tokens_per_s": run.output_tokens_per_s,
            "window_tok_s": window_rate(results, start, args.duration),
            "tpot_ms_p50": run.tpot_ms.p50,
            "ttft_ms_p50": run.ttft_ms.p50,
            "ok": run.ok,
            "errors": run.errors + run.refusals - empty,
            "empty": empty,
            "at_limit": at_limit,
            "output_tokens": run.output_tokens,
            "copied": statistics.median(copied) if copied else None,
            "drafted": _delta(after[0], before[0]),
            "accepted": _delta(after[1], before[1]),
            "wall_s": wall,
            "error_samples": [e for e in run.error_samples if e != EMPTY],
            # Enough to see a loop (small models' greedy answers often end in one).
            "first_answer": answer
            if len(answer) < 900
            else f"{answer[:600]} [...] {answer[-300:]}",
            "run": asdict(run),
        }
        cells.append(cell)
        log(
            f"  {cell['arm']:34s} {mode:10s} {run.output_tokens_per_s:6.1f} tok/s, TPOT "
            f"{run.tpot_ms.p50 or 0:5.1f} ms, TTFT {run.ttft_ms.p50 or 0:6.0f} ms, "
            f"{run.ok} ok ({at_limit} at max_tokens), {cell['errors']} errors, {empty} empty"
            + (f", accepted {cell['accepted']}/{cell['drafted']}" if cell["drafted"] else "")
        )
    return cells


# -- the whole run -----------------------------------------------------------------------------


def estimate_seconds(args: argparse.Namespace, turns: list[Turn]) -> float:
    """A rough length of the run: decode speed guessed from the file size (SmolLM2 ~80 tok/s
    one stream on 2 cores), prompts at ~270 tok/s, speculation's gains left out."""
    total = 0.0
    for model in args.model_paths:
        tg, pp = 80.0 * 98e6 / model.stat().st_size, 270.0
        for workload in args.workload_list:
            for level in args.level_list:
                for turn in turns:
                    peer = turn.contender.server != "llmd"
                    total += START_S["peer" if peer else "llmd"] + 16 / tg + 2
                    for _ in turn.modes:
                        total += cell_seconds(
                            tg, pp, level, PROMPT_TOKENS[workload], MAX_TOKENS[workload],
                            workload, args.requests, args.duration,
                        )  # fmt: skip
    return total * int(args.repeats)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server_bin = args.bin / "llama-server"
    available = contenders(spec_types(server_bin) if server_bin.is_file() else [])
    chosen = pick_contenders(_list(args.contenders), available)
    turns = plan_turns(chosen, args.mode_list, args.sampling_list)
    eta = estimate_seconds(args, turns)
    log(f"estimated {eta / 60:.0f} min ({len(turns)} servers per workload and level: "
        f"{', '.join(t.name for t in turns)})")  # fmt: skip
    if args.estimate:
        return 0
    out = args.json or ROOT / "bench" / "results" / f"speculative-{time.strftime('%Y-%m-%d')}.json"
    head: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "versions": versions(args),
        "note": args.note,
        "command": "scripts/bench-speculative " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            k: getattr(args, k)
            for k in (
                "threads",
                "threads_batch",
                "ctx",
                "parallel",
                "duration",
                "requests",
                "repeats",
                "workloads",
                "levels",
                "modes",
                "peer_sampling",
            )  # fmt: skip
        },
        "omp_wait_policy": omp_policy(),
        "max_tokens": MAX_TOKENS,
        "spec_types": [t for t in NGRAM_TYPES if NGRAM_PREFIX + t in available],
        "contenders": {c.name: asdict(c) for c in chosen},
    }
    cells: list[dict[str, Any]] = []
    started = time.monotonic()
    with TemporaryDirectory(prefix="llmd-bench-spec-") as tmp:
        for model in args.model_paths:
            s = Setup(
                model=model, threads=args.threads, threads_batch=args.threads_batch,
                ctx=args.ctx, parallel=args.parallel, max_queue=32, work=Path(tmp) / model.stem,
                llama_server=server_bin, lcp_python=None,
            )  # fmt: skip
            s.work.mkdir(parents=True)
            # A GGUF without a chat template (Gemma-3-270M) would get each server's own
            # fallback template: on /v1/completions every contender reads the same text.
            has_template = "tokenizer.chat_template" in read_gguf(model).metadata
            endpoint = "chat" if has_template else "completions"
            blocks = [(w, lv) for w in args.workload_list for lv in args.level_list]
            for rep in range(args.repeats):
                for b, (workload, level) in enumerate(blocks):
                    k = (b + rep) % len(turns)
                    for turn in turns[k:] + turns[:k]:
                        spent = (time.monotonic() - started) / 60
                        log(f"{model.stem}: {turn.name} {workload} c={level} repeat {rep + 1} "
                            f"({spent:.1f} of ~{eta / 60:.0f} min)")  # fmt: skip
                        c = turn.contender
                        server = start(c.server, s, c.flags, c.toml)
                        server.label = turn.name
                        where = {"model": model.stem, "workload": workload, "level": level,
                                 "repeat": rep, "endpoint": endpoint}  # fmt: skip
                        head["contenders"][c.name]["argv"] = server.argv
                        cells += take_turn(server, partial(measure, args, turn, endpoint, where))
                        write_results(out, "speculative", args, **head, partial=True, cells=cells)
    summaries = summarize_cells(cells)
    checks = targets(summaries)
    report = (
        f"# Speculative decoding and sampled speed, {head['date']}\n\n"
        f"- command: `{head['command']}`\n- settings: {head['settings']}\n"
        f"- elapsed {(time.monotonic() - started) / 60:.1f} min (estimated {eta / 60:.0f})\n\n"
        + markdown_tables(summaries)
        + "\n### Targets\n\n"
        + targets_table(checks)
    )
    summary_rows = [{"key": list(k), **v} for k, v in summaries.items()]
    write_results(
        out, "speculative", args, **head, partial=False, cells=cells, summary=summary_rows,
        targets=[list(t) for t in checks],
    )  # fmt: skip
    out.with_suffix(".md").write_text(report)
    print(report)
    log(f"results: {out} and {out.with_suffix('.md')}")
    if args.plot_python:
        plot = [args.plot_python, "-m", "bench.spec_plots", str(out.resolve())]
        done = subprocess.run(plot, cwd=ROOT)
        if done.returncode != 0:
            log("plot failed (results are kept)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
