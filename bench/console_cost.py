"""The daemon's CPU for the console's own requests, without a browser: the overview's poll
(`/api/v1/health` + `/api/v1/activity`, every 5 s) and a load of the usage page (three
aggregates and the audit log over 100,000 usage records), each asked 10 times and timed
against the daemon process's CPU counters; then the overview's first paint again.
`PYTHONPATH=. .venv/bin/python -m bench.console_cost` (docs/benchmarks.md, "The web console")."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil
from playwright.async_api import async_playwright

from bench.console import paint, start
from tests.browser import ARGS, CHROMIUM

RESULT = Path(__file__).parent / "results" / "console-2026-11-30-daemon-cost.json"


def main() -> None:
    d = start(Path(tempfile.mkdtemp()), 100_000)
    proc = psutil.Process(d.proc.pid)
    since = (dt.date.today() - dt.timedelta(days=29)).isoformat()

    def cpu() -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    asks = {
        "overview poll (health + activity)": ["/api/v1/health", "/api/v1/activity"],
        "usage page load (3 aggregates + audit)": [
            f"/api/v1/usage?since={since}&group_by={g}&limit=1000" for g in ("day", "key", "model")
        ]
        + [f"/api/v1/audit?since={since}&limit=50"],
    }
    out: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=d.url, timeout=120) as c:
            for name, paths in asks.items():
                for p in paths:
                    c.get(p).raise_for_status()  # a first time, not counted
                n = 10
                c0, w0 = cpu(), time.perf_counter()
                for _ in range(n):
                    for p in paths:
                        c.get(p).raise_for_status()
                out[name] = {
                    "daemon_cpu_ms": round((cpu() - c0) / n * 1000, 1),
                    "wall_ms": round((time.perf_counter() - w0) / n * 1000, 1),
                }

        async def overview() -> dict[str, Any]:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, args=ARGS, headless=True
                )
                try:
                    return await paint(browser, d.url, 7)
                finally:
                    await browser.close()

        painted = asyncio.run(overview())
        out["paint"] = {k: painted[k] for k in ("median_fcp_ms", "median_rendered_ms")}
    finally:
        d.stop()
    print(json.dumps(out, indent=1))
    RESULT.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
