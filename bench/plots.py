"""PNG plots of a bench/suite.py results file: throughput and TTFT against concurrency.

Runs in the benchmark's own virtualenv (scripts/bench makes one with matplotlib), never in the
daemon's: `python bench/plots.py bench/results/<date>-<machine>.json` writes, next to the JSON,
`<stem>-<model>-throughput.png` and `<stem>-<model>-ttft.png`, one line per contender.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def _series(results: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["level"], r["summary"].get(key)) for r in results]
    points = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in points], [float(y) for _, y in points]


def _levels_axis(ax: Any, sweep: dict[str, list[dict[str, Any]]]) -> None:
    levels = sorted({r["level"] for results in sweep.values() for r in results})
    ax.set_xticks(levels)
    ax.set_xticklabels([str(v) for v in levels])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plot_model(m: dict[str, Any], stem: Path, title: str) -> list[Path]:
    sweep = m["workloads"].get("sweep", {}).get("results", {})
    if not sweep:
        return []
    short = Path(m["model"]["name"]).stem
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, results in sweep.items():
        xs, ys = _series(results, "output_tokens_per_s")
        lo = [
            r["summary"].get("output_tokens_per_s.spread", [y, y])[0]
            for r, y in zip(results, ys, strict=False)
        ]
        hi = [
            r["summary"].get("output_tokens_per_s.spread", [y, y])[1]
            for r, y in zip(results, ys, strict=False)
        ]
        line = ax.plot(xs, ys, marker="o", label=label)[0]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("aggregate output tokens/s (median, band = spread)")
    ax.set_title(f"Throughput, {short}\n{title}", fontsize=10)
    _levels_axis(ax, sweep)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = stem.with_name(f"{stem.name}-{short}-throughput.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, results in sweep.items():
        xs, p50 = _series(results, "ttft_ms.p50")
        xs99, p99 = _series(results, "ttft_ms.p99")
        line = ax.plot(xs, [v / 1000 for v in p50], marker="o", label=f"{label} p50")[0]
        ax.plot(xs99, [v / 1000 for v in p99], marker="x", linestyle="--",
                color=line.get_color(), label=f"{label} p99")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("time to first token, s")
    ax.set_title(f"TTFT p50 (solid) and p99 (dashed), {short}\n{title}", fontsize=10)
    _levels_axis(ax, sweep)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    path = stem.with_name(f"{stem.name}-{short}-ttft.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: plots.py RESULTS.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    results = json.loads(path.read_text())
    title = f"{results['date'][:10]}, {results['machine']['hostname']}"
    if results.get("note"):
        title += f", {results['note']}"
    for m in results["models"]:
        for written in plot_model(m, path.with_suffix(""), title):
            print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
