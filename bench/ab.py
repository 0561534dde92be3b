"""Two versions of llmd side by side: the same workloads against each, alternating, fresh
daemons every turn, in one run (these machines are noisy: only same-run ratios mean much).

    .venv/bin/python -m bench.ab --base /path/to/old/checkout [--head .] [--repeats 3]

Made to show that a change which should not move speed (a redesign) did not: the two
workloads that docs/benchmarks.md tracks through the daemon, 16 streaming clients and 4
multi-turn conversations over a 500-token system prompt, with llmd's default threads.
Each checkout's own `llmd` package serves (PYTHONPATH), the load generator is this one's.
Writes bench/results/ab-<date>.json (every run, medians, head/base ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon import MODELS, ROOT, SMOL, start_daemon
from bench.harness import omp_policy
from bench.loadgen import LoadConfig, run_load
from bench.loadstats import RunResult

WORKLOADS: dict[str, dict[str, Any]] = {
    # scripts/loadgen --concurrency 16 --requests 16 --prompt-tokens 150 --max-tokens 128
    "16-clients": dict(concurrency=16, requests=16, prompt_tokens=150, max_tokens=128),
    # scripts/loadgen --mode multiturn --conversations 4 --turns 4 --system-prompt-tokens 500
    #   --prompt-tokens 40 --max-tokens 64
    "multiturn": dict(
        mode="multiturn",
        concurrency=4,
        turns=4,
        system_prompt_tokens=500,
        prompt_tokens=40,
        max_tokens=64,
    ),
}
# What each workload is judged by: (field of RunResult, higher is better).
MEASURES: dict[str, list[tuple[str, bool]]] = {
    "16-clients": [("output_tokens_per_s", True), ("ttft_p50_ms", False)],
    "multiturn": [("ttft_later_turns_p50_ms", False), ("output_tokens_per_s", True)],
}


def config(model: Path, models_dir: Path) -> str:
    return (
        f'models_dir = "{models_dir}"\n[server]\nmax_queue = 32\n'
        "[engine]\nctx_per_seq = 2048\nparallel = 16\n"
        f'[models.bench]\npath = "{model.resolve()}"\n'
    )


def measure(run: RunResult, field: str) -> float | None:
    if field == "ttft_p50_ms":
        return run.ttft_ms.p50
    value = getattr(run, field)
    return None if value is None else float(value)


def revision(checkout: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def turn(label: str, checkout: Path, workload: str, model: Path, salt: str) -> RunResult:
    """One workload against a fresh daemon of `checkout`."""
    with tempfile.TemporaryDirectory(prefix=f"ab-{label}-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        daemon = start_daemon(work, config(model, work / "models"), checkout=checkout)
        try:
            cfg = LoadConfig(
                url=daemon.url + "/v1",
                label=label,
                ignore_eos=True,
                seed_salt=salt,
                **WORKLOADS[workload],
            )
            return asyncio.run(run_load(cfg))
        finally:
            daemon.stop()


def summary(runs: dict[str, dict[str, list[RunResult]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload, by_label in runs.items():
        out[workload] = {}
        for field, _higher in MEASURES[workload]:
            medians = {}
            for label, results in by_label.items():
                values = [v for r in results if (v := measure(r, field)) is not None]
                medians[label] = statistics.median(values) if values else None
            base, head = medians.get("base"), medians.get("head")
            ratio = head / base if base and head is not None else None
            out[workload][field] = {**medians, "head/base": ratio}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the other checkout (the 'before')")
    p.add_argument("--head", type=Path, default=ROOT, help="this checkout by default")
    p.add_argument("--model", type=Path, default=MODELS / SMOL)
    p.add_argument("--repeats", type=int, default=3, help="turns of each version per workload")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    policy = omp_policy()
    checkouts = {"base": args.base, "head": args.head}
    workloads = [w for w in args.workloads.split(",") if w]
    runs: dict[str, dict[str, list[RunResult]]] = {w: {"base": [], "head": []} for w in workloads}
    for i in range(args.repeats):
        for workload in workloads:
            # base, head, then head, base: neither always goes first on a warming machine.
            order = ["base", "head"] if i % 2 == 0 else ["head", "base"]
            for label in order:
                run = turn(label, checkouts[label], workload, args.model, f"{workload}/{i}")
                runs[workload][label].append(run)
                shown = ", ".join(
                    f"{field} {measure(run, field)}" for field, _ in MEASURES[workload]
                )
                print(f"{workload} #{i + 1} {label}: {shown} (errors {run.errors})")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": str(args.model),
        "omp_wait_policy": policy,
        "revisions": {label: revision(path) for label, path in checkouts.items()},
        "workloads": {w: WORKLOADS[w] for w in workloads},
        "summary": summary(runs),
        "runs": {
            w: {label: [dataclasses.asdict(r) for r in rs] for label, rs in by.items()}
            for w, by in runs.items()
        },
    }
    out = args.out or ROOT / "bench" / "results" / f"ab-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
