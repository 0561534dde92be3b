"""PNG plots of bench/speculative.py results: how llmd's speed compares with each other contender,
cell by cell, against the issue's targets (1.0x, and 1.5x for one stream on repetitive work).

Runs in the benchmark's plotting virtualenv (scripts/bench makes one with matplotlib; the daemon
never depends on it). Each results file gets `<stem>.png` beside it: one row of panels per
model, output tokens per second (llmd ÷ contender) on the left and time per output token
(contender ÷ llmd, so that right of 1 is llmd faster in both) on the right, one bar per
contender in every (workload, clients, sampling) cell.

    ~/.cache/llmd-bench/plot-venv/bin/python -m bench.spec_plots bench/results/speculative-*.json

(from the repository's root: the ratios come from bench/spec_report.py, which needs only the
standard library).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.spec_report import ratios  # noqa: E402


def plot(path: Path) -> Path | None:
    doc = json.loads(path.read_text())
    by_model = ratios(doc.get("summary") or [])
    if not by_model:
        return None
    contenders = sorted({c for cells in by_model.values() for row in cells.values() for c in row})
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(contenders)}
    height = sum(max(2.0, 0.28 * len(cells) * len(contenders)) for cells in by_model.values())
    fig, axes = plt.subplots(len(by_model), 2, figsize=(13, 1.8 + height), squeeze=False)
    for row_axes, (model, cells) in zip(axes, sorted(by_model.items()), strict=True):
        labels = list(cells)
        width = 0.8 / len(contenders)
        for col, (ax, title) in enumerate(
            zip(row_axes, ("out tok/s: llmd ÷ contender", "TPOT: contender ÷ llmd"), strict=True)
        ):
            for j, contender in enumerate(contenders):
                ys = [i + (j - (len(contenders) - 1) / 2) * width for i in range(len(labels))]
                xs = [cells[label].get(contender, (0.0, 0.0))[col] for label in labels]
                ax.barh(ys, xs, height=width, color=colors[contender], label=contender)
            ax.axvline(1.0, color="black", linewidth=0.8)
            if any(not label.startswith("chat,") and ", 1 client," in label for label in labels):
                ax.axvline(1.5, color="grey", linewidth=0.8, linestyle="--")
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels(labels if col == 0 else [""] * len(labels))
            ax.invert_yaxis()
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
    fig.suptitle(
        f"{path.stem} (right of 1: llmd faster; dashed: 1.5x, the one-stream target)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.05 + 0.02 * (len(names) // 4), 1, 1))
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for name in argv:
        written = plot(Path(name))
        print(f"{name}: {written or 'nothing to plot (no llmd cell with another contender)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
