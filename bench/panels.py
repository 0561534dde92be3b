"""Draw the dashboard's timeseries panels from a bench/observability.py result (matplotlib).

Runs in the benchmark's plotting venv (scripts/bench-observability makes it), not in the
daemon's: matplotlib is no dependency of llmd.

    python bench/panels.py bench/results/2026-11-24-observability.json docs/img/panels.png
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCALE = {"bytes": (1 / 2**20, "MiB"), "s": (1.0, "s"), "percentunit": (100.0, "%")}


def draw(result: dict[str, Any], out: Path) -> None:
    panels = [p for p in result["panels"] if p["series"]]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.1 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        factor, label = SCALE.get(panel["unit"], (1.0, panel["unit"].replace("short", "")))
        for series in panel["series"]:
            points = [(t, v * factor) for t, v in series["points"] if math.isfinite(v)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=series["legend"] or "value", linewidth=1.2)
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the run", fontsize=8)
    fig.suptitle(
        f"llmd dashboard panels, real Prometheus data from one benchmark run ({result['date']})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
