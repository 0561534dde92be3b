"""What bench/speculative.py's measurements come to: medians over repeats, llmd's ratio to each
peer in the same run, the issue's targets met or not, the markdown tables, and the estimate of a
run's length. Pure functions of the results' `cells` (one per measured run), so they are tested
on made-up numbers (tests/unit/test_bench_speculative.py).

A cell: {"model", "workload", "level", "mode", "arm", "repeat", "output_tokens_per_s",
"tpot_ms_p50", "ttft_ms_p50", "ok", "errors", "empty", "output_tokens", "copied", "drafted",
"accepted", "at_limit"}; `arm` is the contender plus, for a peer sampling with top_k 0, " top_k=0".
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

LLMD = "llmd"
LLMD_OFF = "llmd-nospec"
PEER = "llama-server"
NGRAM_PREFIX = "llama-server+"
EXACT = " top_k=0"
"""The suffix of a peer arm sampling with top_k 0, min_p 0 (llmd's distribution)."""

Key = tuple[str, str, int, str, str]
"""(model, workload, level, mode, arm)."""


def summarize(cells: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Per (model, workload, level, mode, arm): medians over the repeats, tok/s with its spread,
    and the counts summed."""
    groups: dict[Key, list[dict[str, Any]]] = {}
    for c in cells:
        key = (c["model"], c["workload"], int(c["level"]), c["mode"], c["arm"])
        groups.setdefault(key, []).append(c)
    out: dict[Key, dict[str, Any]] = {}
    for key, runs in groups.items():
        tok_s = [float(r["output_tokens_per_s"]) for r in runs]
        s: dict[str, Any] = {
            "repeats": len(runs),
            "tok_s": statistics.median(tok_s),
            "tok_s_spread": [min(tok_s), max(tok_s)],
        }
        for name in ("tpot_ms_p50", "ttft_ms_p50", "copied", "window_tok_s"):
            values = [float(v) for r in runs if (v := r.get(name)) is not None]
            s[name] = statistics.median(values) if values else None
        for name in ("ok", "errors", "empty", "at_limit", "output_tokens"):
            s[name] = sum(int(r.get(name) or 0) for r in runs)
        for name in ("drafted", "accepted"):
            values = [int(v) for r in runs if (v := r.get(name)) is not None]
            s[name] = sum(values) if values else None
        out[key] = s
    return out


def window_rate(results: Iterable[Any], start: float, duration: float) -> float | None:
    """Output tokens per second delivered while every client was still sending (the first
    `duration` seconds from `start`), from each answer's chunk times (`RequestResult`:
    started_s, ttft_s, itl_s), a chunk's share of the answer's tokens each. Unlike tokens over
    the whole wall time it does not hang on the last answers: with answers about as long as
    the cell, how many were started before the end swings the tail, and the tail the rate
    (two runs with the same TPOT 9% apart in out tok/s: docs/benchmarks.md). None without a
    duration."""
    if duration <= 0:
        return None
    end, tokens = start + duration, 0.0
    for r in results:
        if not r.ok or r.started_s is None or r.ttft_s is None:
            continue
        at = r.started_s + r.ttft_s
        within = int(at <= end)
        for gap in r.itl_s:
            at += gap
            if at > end:
                break
            within += 1
        tokens += r.completion_tokens * within / (len(r.itl_s) + 1)
    return tokens / duration


def ratio(summaries: dict[Key, dict[str, Any]], key: Key, other_arm: str) -> float | None:
    """tok/s of `key`'s arm over `other_arm`'s in the same model, workload, level and mode."""
    other = summaries.get((*key[:4], other_arm))
    mine = summaries.get(key)
    if mine is None or other is None or not other["tok_s"]:
        return None
    return float(mine["tok_s"]) / float(other["tok_s"])


def acceptance(s: dict[str, Any]) -> str:
    """accepted / drafted (rate), '-' when the server does not count them."""
    if s.get("drafted") is None or s.get("accepted") is None:
        return "-"
    rate = f" ({s['accepted'] / s['drafted']:.0%})" if s["drafted"] else ""
    return f"{s['accepted']}/{s['drafted']}{rate}"


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown_tables(summaries: dict[Key, dict[str, Any]]) -> str:
    """One table per model, workload and level; a row per mode and arm, with llmd's tok/s
    divided by that row's (`llmd ÷ row`)."""
    blocks: dict[tuple[str, str, int], list[Key]] = {}
    for key in summaries:
        blocks.setdefault(key[:3], []).append(key)
    lines: list[str] = []
    for (model, workload, level), keys in blocks.items():
        lines += [f"### {model}: {workload}, {level} client{'s' if level > 1 else ''}", ""]
        lines.append(
            "| mode | contender | out tok/s (spread) | llmd ÷ row | TPOT p50 ms | TTFT p50 ms | "
            "tok/answer | accepted/drafted | ok (at max_tokens)/err/empty | copied | "
            "window tok/s (llmd ÷ row) |"
        )
        lines.append("|---" * 11 + "|")
        modes = list(dict.fromkeys(k[3] for k in keys))
        for key in sorted(keys, key=lambda k: modes.index(k[3])):  # stable: arms in run order
            s = summaries[key]
            lo, hi = s["tok_s_spread"]
            spread = f" ({lo:.1f}-{hi:.1f})" if s["repeats"] > 1 else ""
            per_answer = s["output_tokens"] / s["ok"] if s["ok"] else None
            copied = "-" if s["copied"] is None else f"{s['copied']:.0%}"
            lines.append(
                f"| {key[3]} | {key[4]} | {s['tok_s']:.1f}{spread} | "
                f"{_x(ratio(summaries, (*key[:4], LLMD), key[4]))} | "
                f"{_fmt(s['tpot_ms_p50'])} | {_fmt(s['ttft_ms_p50'], 0)} | "
                f"{_fmt(per_answer, 0)} | {acceptance(s)} | "
                f"{s['ok']} ({s['at_limit']})/{s['errors']}/{s['empty']} | {copied} | "
                f"{_window(summaries, key)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _window(summaries: dict[Key, dict[str, Any]], key: Key) -> str:
    """The row's window tok/s, and llmd's over it."""
    mine, ours = summaries[key].get("window_tok_s"), summaries.get((*key[:4], LLMD), {})
    if not mine:
        return "-"
    theirs = ours.get("window_tok_s")
    return f"{mine:.1f}" + (f" ({theirs / mine:.2f}x)" if theirs else "")


Target = tuple[str, str, bool | None]
"""(what, measured, met): met is None when a number is missing."""


def _check(
    summaries: dict[Key, dict[str, Any]], cell: Key, other: str, bound: float, what: str
) -> Target | None:
    if (*cell[:4], other) not in summaries:
        return None
    r = ratio(summaries, cell, other)
    model, workload, level, mode, _ = cell
    name = f"{model} {workload} c={level} {mode}: llmd >= {bound:g}x {other}"
    return (f"{name} ({what})", _x(r), None if r is None else r >= bound)


def targets(summaries: dict[Key, dict[str, Any]]) -> list[Target]:
    """The issue's targets, for the cells this run measured:
    - sampled (every mode but greedy), 1 and 16 clients: >= 1.0x llama-server at its defaults
      and with top_k 0;
    - one stream, the repetitive workloads: >= 1.5x llama-server plain and ahead of its best
      n-gram mode; free chat >= 0.97x llama-server;
    - 16 clients: no slower than llmd with speculation off."""
    rows: list[Target] = []
    for key in summaries:
        model, workload, level, mode, arm = key
        if arm != LLMD:
            continue
        checks: list[Target | None] = []
        if mode != "greedy" and level in (1, 16):
            checks.append(_check(summaries, key, PEER, 1.0, "sampled speed"))
            checks.append(_check(summaries, key, PEER + EXACT, 1.0, "sampled speed, exact"))
        if level == 1 and workload == "chat":
            checks.append(_check(summaries, key, PEER, 0.97, "free chat"))
        if level == 1 and workload != "chat":
            checks.append(_check(summaries, key, PEER, 1.5, "one stream, repetitive"))
            best = _best_ngram(summaries, key)
            if best is not None:
                checks.append(_check(summaries, key, best, 1.0, "best n-gram mode"))
        if level == 16:
            checks.append(_check(summaries, key, LLMD_OFF, 1.0, "never slower"))
        rows += [c for c in checks if c is not None]
    return rows


def _best_ngram(summaries: dict[Key, dict[str, Any]], key: Key) -> str | None:
    """The fastest of llama-server's n-gram arms at its default sampling in `key`'s cell."""
    arms = [
        (s["tok_s"], k[4])
        for k, s in summaries.items()
        if k[:4] == key[:4] and k[4].startswith(NGRAM_PREFIX) and not k[4].endswith(EXACT)
    ]
    return max(arms)[1] if arms else None


def targets_table(rows: Sequence[Target]) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for what, measured, met in rows:
        lines.append(
            f"| {what} | {measured} | {'-' if met is None else 'yes' if met else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


# -- measures of one run ----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric_sum(text: str, name: str, model: str | None = None) -> float | None:
    """The sum of Prometheus text exposition `name`'s samples (of `model`'s label, if given);
    None when the server has no such metric."""
    total, seen = 0.0, False
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        if model is not None and m.group(2) and f'model="{model}"' not in m.group(2):
            continue
        total += float(m.group(3))
        seen = True
    return total if seen else None


def copied_fraction(source: str, answer: str, n: int = 4) -> float | None:
    """The share of the answer's word n-grams found in `source`: how much of it the prompt
    holds, i.e. what a drafter reading the prompt could propose. None for answers shorter
    than n words."""
    words = answer.split()
    if len(words) < n:
        return None
    src = source.split()
    have = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return sum(g in have for g in grams) / len(grams)


# -- how long a run takes -----------------------------------------------------------------------

FILL = {"code_edit": 1.0, "extraction": 1.0, "json": 1.0, "chat": 0.9}
"""Share of max_tokens an answer uses: SmolLM2's greedy answers to the three repetitive
workloads fall into a loop and run to the end (seen in the smoke run, 2026-11-30)."""
START_S = {"llmd": 8.0, "peer": 3.0}
"""A fresh server's start, model load included (measured on 2 cores: llmd 6-9 s, llama-server
2-3 s)."""


def aggregate_speed(tg: float, level: int) -> float:
    """Output tok/s of `level` streams from one stream's `tg`: a decode step of n tokens costs
    ~1 + 0.33 (n - 1) times one token's (issue 18: ~12 ms, then ~4 ms per further token)."""
    return tg * level / (1 + 0.33 * (level - 1))


def cell_seconds(
    tg: float, pp: float, level: int, prompt_tokens: int, max_tokens: int, workload: str,
    requests: int, duration: float,
) -> float:  # fmt: skip
    """One measured run: every client sends `requests` requests, and more until `duration`
    has passed."""
    out = max_tokens * FILL.get(workload, 1.0)
    one_round = level * out / aggregate_speed(tg, level) + level * prompt_tokens / pp
    rounds = max(requests, math.ceil(duration / one_round) if duration > 0 else 0)
    return rounds * one_round


def ratios(summary: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """For the plots (bench/spec_plots.py), from a results file's summary rows: model -> cell
    ("workload, N clients, mode") -> contender -> (llmd ÷ it in out tok/s, its TPOT ÷ llmd's:
    above 1 is llmd faster in both), for every cell with llmd and another contender."""
    summaries: dict[Key, dict[str, Any]] = {}
    for row in summary:
        model, workload, level, mode, arm = row["key"]
        summaries[(model, workload, int(level), mode, arm)] = row
    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for key in sorted(summaries):
        model, workload, level, mode, arm = key
        ours = summaries.get((*key[:4], LLMD))
        speed = ratio(summaries, (*key[:4], LLMD), arm)
        if arm == LLMD or ours is None or not speed:
            continue
        tpot = summaries[key].get("tpot_ms_p50") or 0.0
        mine = ours.get("tpot_ms_p50") or 0.0
        label = f"{workload}, {level} client{'s' if level > 1 else ''}, {mode}"
        cell = out.setdefault(model, {}).setdefault(label, {})
        cell[arm] = (speed, tpot / mine if mine else 0.0)
    return out
