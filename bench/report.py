"""What a benchmark's runs come to: summaries, ratios, targets, the result files and plots.

- `summarize_runs`: the median and spread (min, max) of every metric over a level's repeats;
- `ratios` and `targets`: llmd divided by each peer, and the issue's targets met or not;
- `markdown`: the report written next to the JSON; `ResultsFile`: where the JSON goes,
  rewritten after every measurement so an interrupted run keeps what it measured;
- `spread` and `write_results`: the same for the smaller comparisons (bench.embed, bench.probe,
  bench.structured), with `machine_info` and `versions` for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.daemon import ROOT
from bench.harness import binary, log, omp_policy

SUMMARY_KEYS = [
    f"{metric}.{p}"
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
    for p in ("p50", "p90", "p99")
] + ["output_tokens_per_s", "requests_per_s", "cached_prompt_tokens", "prompt_tokens"]


def _get(run: dict[str, Any], dotted: str) -> float | None:
    node: Any = run
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every metric over the repeats, and the spread (min, max) of each."""
    summary: dict[str, Any] = {}
    for key in [*SUMMARY_KEYS, "ttft_first_turn_p50_ms", "ttft_later_turns_p50_ms"]:
        values = [v for r in runs if (v := _get(r, key)) is not None]
        if values:
            summary[key] = statistics.median(values)
            summary[f"{key}.spread"] = [min(values), max(values)]
    for key in ("errors", "refusals", "ok", "requests"):
        summary[key] = sum(int(r[key]) for r in runs)
    summary["error_samples"] = [e for r in runs for e in r["error_samples"]][:5]
    return summary


# -- ratios and targets ----------------------------------------------------------------------


def _summary(model_result: dict[str, Any], wl: str, label: str, level: int) -> dict[str, Any]:
    for r in model_result["workloads"].get(wl, {}).get("results", {}).get(label, []):
        if r["level"] == level:
            return r["summary"]  # type: ignore[no-any-return]
    return {}


def ratios(m: dict[str, Any]) -> dict[str, Any]:
    """llmd divided by each peer, per workload and level, for the headline metrics."""
    out: dict[str, Any] = {}
    for wl_name, wl in m["workloads"].items():
        mine = {r["level"]: r["summary"] for r in wl["results"].get("llmd", [])}
        for peer, results in wl["results"].items():
            if peer == "llmd":
                continue
            for r in results:
                ours = mine.get(r["level"])
                if not ours:
                    continue
                row = {}
                for key in ("output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50",
                            "e2e_ms.p50", "ttft_later_turns_p50_ms"):  # fmt: skip
                    a, b = ours.get(key), r["summary"].get(key)
                    if a is not None and b:
                        row[key] = a / b
                out.setdefault(wl_name, {}).setdefault(peer, {})[str(r["level"])] = row
    return out


def targets(m: dict[str, Any], parallel: int) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, measured, met); met is None when a number is missing."""
    rows: list[tuple[str, str, bool | None]] = []
    ours = _summary(m, "sweep", "llmd", parallel)
    peer = _summary(m, "sweep", "llama-server", parallel)
    if ours and peer:
        ratio = ours["output_tokens_per_s"] / peer["output_tokens_per_s"]
        rows.append(
            (
                f"{parallel} streams: output tok/s >= 1.25x llama-server -np {parallel}",
                f"{ours['output_tokens_per_s']:.1f} vs {peer['output_tokens_per_s']:.1f}: "
                f"{ratio:.2f}x",
                ratio >= 1.25,
            )
        )
        rows.append(
            (
                f"{parallel} streams: median TTFT <= llama-server's",
                f"{ours['ttft_ms.p50']:.0f} ms vs {peer['ttft_ms.p50']:.0f} ms",
                ours["ttft_ms.p50"] <= peer["ttft_ms.p50"],
            )
        )
    ours = _summary(m, "multiturn", "llmd", _level(m, "multiturn"))
    peer = _summary(m, "multiturn", "llama-server", _level(m, "multiturn"))
    key = "ttft_later_turns_p50_ms"
    if ours.get(key) and peer.get(key):
        rows.append(
            (
                "multi-turn: median TTFT of later turns <= llama-server's",
                f"{ours[key]:.0f} ms vs {peer[key]:.0f} ms",
                ours[key] <= peer[key],
            )
        )
    one = _summary(m, "sweep", "llmd", 1)
    lb = m["raw"].get("llama_bench", {}).get("results", {})
    tg = next((v["median"] for k, v in lb.items() if k.startswith("tg128")), None)
    threads = m.get("settings", {}).get("threads")
    tg = lb.get(f"tg128_t{threads}", {}).get("median", tg)
    if one.get("tpot_ms.p50") and tg:
        decode = 1000 / one["tpot_ms.p50"]
        rows.append(
            (
                "one stream: decode (1000 / TPOT p50) >= 0.9x llama-bench tg128",
                f"{decode:.1f} vs {tg:.1f} tok/s: {decode / tg:.2f}x",
                decode >= 0.9 * tg,
            )
        )
    over = _summary(m, "overload", "llmd", _level(m, "overload"))
    if over:
        accepted = over["requests"] - over["refusals"]
        rows.append(
            (
                "overload: only 503/429 refusals; every accepted request completes",
                f"{over['refusals']} refused, {over['ok']} of {accepted} accepted completed, "
                f"{over['errors']} errors",
                over["errors"] == 0 and over["ok"] == accepted,
            )
        )
    return rows


def _level(m: dict[str, Any], wl: str) -> int:
    results = m["workloads"].get(wl, {}).get("results", {}).get("llmd", [])
    return int(results[0]["level"]) if results else 0


# -- report ----------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _spread(s: dict[str, Any], key: str, digits: int = 1) -> str:
    v = s.get(key)
    if v is None:
        return "-"
    lo, hi = s.get(f"{key}.spread", [v, v])
    if lo == hi:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark {results['date']} on {results['machine']['hostname']}",
        "",
        f"- machine: {results['machine']['cpu']}, {results['machine']['cpus']} CPUs, "
        f"{results['machine']['ram_gb']:.0f} GB RAM, {results['machine']['platform']}",
        f"- note: {results['note']}" if results.get("note") else "",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in results['settings'].items())}",
        f"- command: `{results['command']}`",
        "",
    ]
    for m in results["models"]:
        lines += _model_markdown(m, results["settings"])
    return "\n".join(line for line in lines if line is not None) + "\n"


def _model_markdown(m: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    lines = [f"## {m['model']['name']}", ""]
    lines.append(
        f"Endpoint /v1/{m.get('endpoint', 'chat')}. Elapsed {m['elapsed_s'] / 60:.1f} min "
        f"(estimated {m['estimated_s'] / 60:.1f}). "
        "Medians of the repeats; the spread (min-max over repeats) in brackets."
    )
    lines += ["", "### Raw engine speed (no HTTP)", "", "| measure | tok/s |", "|---|---|"]
    for key, v in m["raw"].get("llama_bench", {}).get("results", {}).items():
        lines.append(
            f"| llama-bench {key} | {v['median']:.1f} ({v['spread'][0]:.1f}-{v['spread'][1]:.1f}) |"
        )
    for key, v in m["raw"].get("llmd_engine", {}).items():
        lines.append(
            f"| llmd engine in-process, {key.removesuffix('_tok_s')} | {v['median']:.1f} |"
        )
    for wl_name, wl in m["workloads"].items():
        lines += ["", f"### {wl['title']}", ""]
        lines.append(
            "| contender | clients | out tok/s | req/s | TTFT p50/p90/p99 ms | "
            "TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | e2e p50/p90/p99 ms | cached tok | "
            "ok / refused / errors | peak RSS MB |"
        )
        lines.append("|---" * 11 + "|")
        for label, results in wl["results"].items():
            for r in results:
                s = r["summary"]
                trip = {
                    metric: "/".join(_ms(s.get(f"{metric}.{p}")) for p in ("p50", "p90", "p99"))
                    for metric in ("ttft_ms", "e2e_ms")
                }
                fine = {
                    metric: "/".join(
                        "-" if s.get(f"{metric}.{p}") is None else f"{s[f'{metric}.{p}']:.1f}"
                        for p in ("p50", "p90", "p99")
                    )
                    for metric in ("tpot_ms", "itl_ms")
                }
                lines.append(
                    f"| {label} | {r['level']} | {_spread(s, 'output_tokens_per_s')} | "
                    f"{_spread(s, 'requests_per_s', 2)} | {trip['ttft_ms']} | {fine['tpot_ms']} | "
                    f"{fine['itl_ms']} | {trip['e2e_ms']} | "
                    f"{s.get('cached_prompt_tokens', 0):.0f} of {s.get('prompt_tokens', 0):.0f} | "
                    f"{s['ok']} / {s['refusals']} / {s['errors']} | "
                    f"{r['peak_rss_bytes'] / 1e6:.0f} |"
                )
        if wl_name == "multiturn":
            lines += ["", "| contender | TTFT p50 first turns ms | TTFT p50 later turns ms |",
                      "|---|---|---|"]  # fmt: skip
            for label, results in wl["results"].items():
                s = results[0]["summary"]
                lines.append(
                    f"| {label} | {_spread(s, 'ttft_first_turn_p50_ms', 0)} | "
                    f"{_spread(s, 'ttft_later_turns_p50_ms', 0)} |"
                )
    lines += ["", "### llmd / peer", ""]
    lines.append("| workload | peer | clients | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 |")
    lines.append("|---|---|---|---|---|---|---|")
    for wl_name, peers in m["ratios"].items():
        for peer, levels in peers.items():
            for level, row in levels.items():
                cells = [
                    "-" if row.get(k) is None else f"{row[k]:.2f}x"
                    for k in ("output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50")
                ]
                lines.append(f"| {wl_name} | {peer} | {level} | " + " | ".join(cells) + " |")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets({**m, "settings": settings}, settings["parallel"]):
        lines.append(
            f"| {target} | {measured} | {'-' if met is None else 'yes' if met else '**no**'} |"
        )
    lines += ["", "Servers as started:", ""]
    for label, srv in m["servers"].items():
        argv = " ".join(
            Path(a).name
            if a.startswith("/") and a.endswith(("python", "llmd", "llama-server"))
            else a
            for a in srv["argv"]
        )
        lines.append(f"- {label}: `{argv}`, peak RSS {srv.get('peak_rss_bytes', 0) / 1e6:.0f} MB")
    lines.append("")
    return lines


# -- result files ----------------------------------------------------------------------------


class ResultsFile:
    """The suite's results in OUT/<date>-<host>[-quick][-N].json: rewritten after every
    measurement, marked partial, so an interrupted run keeps what it measured; at the end the
    whole JSON, the markdown report beside it, and the plots."""

    def __init__(self, out: Path, results: dict[str, Any], quick: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y-%m-%d')}-{results['machine']['hostname']}"
        if quick:
            stem += "-quick"
        path = out / f"{stem}.json"
        n = 2
        while path.exists():
            path = out / f"{stem}-{n}.json"
            n += 1
        self.path = path
        self.results = results

    def save_partial(self, partial: dict[str, Any]) -> None:
        """The results so far, with `partial`, the model being measured."""
        doc = {**self.results, "models": [*self.results["models"], partial], "partial": True}
        self.path.write_text(json.dumps(doc, indent=1) + "\n")

    def finish(self, plot_python: str | None) -> str:
        """Write the JSON, the markdown report (returned) and, given a python with matplotlib,
        the plots (bench/plots.py)."""
        self.path.write_text(json.dumps(self.results, indent=1) + "\n")
        report = markdown(self.results)
        self.path.with_suffix(".md").write_text(report)
        if plot_python:
            done = subprocess.run([plot_python, str(ROOT / "bench/plots.py"), str(self.path)])
            if done.returncode != 0:
                log("plots failed (results are kept)")
        return report


def spread(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median, min and max of every measure over the repeats, keyed `<label>.<measure>`."""
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        for key in results[0]:
            values = [r[key] for r in results]
            summary[f"{label}.{key}"] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return summary


def write_results(out: Path | None, name: str, args: argparse.Namespace, **fields: Any) -> None:
    """An engine probe's results as JSON (default bench/results/<name>-<date>.json), with the
    model, thread counts and OpenMP policy they were measured under."""
    out = out or ROOT / "bench" / "results" / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    head = {"model": str(args.model), "threads": args.threads, "threads_batch": args.threads_batch}
    head["omp_wait_policy"] = omp_policy()
    out.write_text(json.dumps({**head, **fields}, indent=1) + "\n")
    print(f"written: {out}")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node() or "machine",
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": psutil.virtual_memory().total / 1e9,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def versions(args: argparse.Namespace) -> dict[str, str]:
    out = {"python": platform.python_version()}
    done = subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "-c",
            "import llmd, llama_cpp; print(llmd.__version__, llama_cpp.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        llmd_v, lcp_v = done.stdout.split()
        out["llmd"] = llmd_v
        out["llama-cpp-python"] = lcp_v
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if git.returncode == 0:
        out["llmd commit"] = git.stdout.strip()
    server = binary(args.llama_cpp_bin, "llama-server")
    if server is not None:
        done = subprocess.run([str(server), "--version"], capture_output=True, text=True)
        found = re.search(r"version: (.+)", done.stdout + done.stderr)
        if found:
            out["llama.cpp"] = found.group(1).strip()
    return out
