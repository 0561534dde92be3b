"""What metrics and logging cost, and real data for the dashboard's panels (docs/observability.md).

One run, two daemons on the same models and settings, side by side:
- "on": metrics enabled, access and app logs to stderr and to rotated files (the defaults a
  production box would run with, plus the log folder);
- "off": metrics disabled, log level warning (no access lines).

1. Throughput: 16 concurrent streams (~150-token prompts, 128 output tokens) against each,
   alternating on/off for --rounds rounds; the ratio of their median tokens/s is the cost.
2. /metrics latency: --requests requests (short generations on both models, and cheap ones)
   against "on", a burst of 40 past gemma's queue limit (refusals), then --scrapes timed GETs
   of /metrics.
3. Panels: when Prometheus is installed (`promtool`'s package), it scrapes "on" every 2 s
   during the run, and every timeseries panel of deploy/grafana/llmd-dashboard.json is queried
   with its own PromQL; bench/panels.py draws them (docs/observability.md).

    scripts/bench-observability            # all of it, then the PNG
    .venv/bin/python -m bench.observability --requests 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench.daemon import GEMMA, ROOT, SMOL, Daemon, free_port, spawn, start_daemon
from bench.daemon import get as _get
from bench.loadgen import LoadConfig, run_load

DASHBOARD = ROOT / "deploy" / "grafana" / "llmd-dashboard.json"


def _config(models_dir: Path, on: bool) -> str:
    observability = (
        '[logging]\ndir = "logs"\n' if on else '[logging]\nlevel = "warning"\n'
    ) + f"[metrics]\nenabled = {str(on).lower()}\n"
    return f"""models_dir = "{models_dir}"
[server]
max_queue = 16
[engine]
ctx_per_seq = 1024
parallel = 16
{observability}
[models.smollm2]
path = "{SMOL}"
[models.gemma3-270m]
path = "{GEMMA}"
parallel = 2
"""


def _wait_ready(d: Daemon) -> None:
    """Until every model of the daemon is loaded."""

    def models_ready() -> bool:
        health = json.loads(_get(d.url + "/api/v1/health"))
        return all(m["state"] == "ready" for m in health["models"])

    d.wait_until(models_ready, 180, 0.3)


async def _many_requests(url: str, total: int, concurrency: int) -> dict[str, int]:
    """`total` requests, status counts. One in twenty generates (both models, chat and
    completions); on 2 shared cores 10,000 generations would take most of an hour, and what
    /metrics costs depends on its series (models, routes, statuses), not on how many requests
    fed them. The rest are cheap real requests: model lists, health, unknown models (404),
    bad JSON (400)."""
    statuses: dict[str, int] = {}
    counter = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            kind = i % 20
            method, path = "POST", "/v1/chat/completions"
            body: dict[str, Any] | None = None
            data: bytes | None = None
            tokens = 1 + i % 3
            if kind == 0:
                msg = [{"role": "user", "content": f"Hi {i}"}]
                body = {"model": "smollm2", "messages": msg, "max_tokens": tokens}
            elif kind == 10:
                path = "/v1/completions"
                body = {"model": "gemma3-270m", "prompt": f"Note {i}:", "max_tokens": tokens}
            elif kind % 4 == 0:
                method, path = "GET", "/v1/models"
            elif kind % 4 == 1:
                method, path = "GET", "/api/v1/health"
            elif kind % 4 == 2:
                msg = [{"role": "user", "content": "x"}]
                body = {"model": f"missing-{i % 7}", "messages": msg}
            else:
                data = b"{not json"
            async with session.request(method, url + path, json=body, data=data) as resp:
                await resp.read()
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def _burst(url: str, n: int) -> dict[str, int]:
    """`n` requests at once to gemma (2 slots, queue of 16): the excess is refused (503)."""
    statuses: dict[str, int] = {}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": "gemma3-270m", "prompt": f"Burst {i}:", "max_tokens": 16}
        async with session.post(url + "/v1/completions", json=body) as resp:
            await resp.read()
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    return statuses


def _time_scrapes(url: str, n: int) -> dict[str, float]:
    times, size = [], 0
    for _ in range(n):
        start = time.perf_counter()
        body = _get(url + "/metrics")
        times.append((time.perf_counter() - start) * 1000)
        size = len(body)
        time.sleep(0.05)
    times.sort()
    return {
        "n": n,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (n - 1))], 2),
        "max_ms": round(times[-1], 2),
        "bytes": size,
    }


class Prometheus:
    """A real Prometheus scraping the "on" daemon, queried with the dashboard's PromQL."""

    def __init__(self, binary: str, workdir: Path, target_port: int) -> None:
        workdir.mkdir(parents=True)
        port = free_port()
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
            "scrape_configs:\n  - job_name: llmd\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n        labels: {{box: bench}}\n"
        )
        argv = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        self.daemon = spawn(argv, port, workdir / "prometheus.log", workdir, name="prometheus")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        query = urllib.parse.urlencode(
            {"query": expr, "start": start, "end": end, "step": f"{step}s"}
        )
        body = json.loads(_get(f"{self.daemon.url}/api/v1/query_range?{query}", 30))
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.daemon.stop()


def _panels(prom: Prometheus, start: float, end: float) -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] != "timeseries":
            continue
        series = []
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", "20s")
                .replace("$box", ".*")
                .replace("$model", ".*")
            )
            for result in prom.query_range(expr, start, end, 5):
                legend = target.get("legendFormat", "")
                for label, value in result["metric"].items():
                    legend = legend.replace("{{" + label + "}}", value)
                legend = re.sub(r"\{\{\w+\}\}", "-", legend)  # label absent (e.g. no key)
                series.append(
                    {
                        "legend": legend.replace("{{box}} ", "").strip(),
                        "points": [[float(t) - start, float(v)] for t, v in result["values"]],
                    }
                )
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        out.append({"title": panel["title"], "unit": unit, "series": series})
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    models_dir = Path(args.models).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="llmd-obs-"))
    # Both start at once (each loads two models); then both are waited for.
    on = start_daemon(tmp / "on", _config(models_dir, True), None)
    off = start_daemon(tmp / "off", _config(models_dir, False), None)
    prom = None
    binary = args.prometheus or shutil.which("prometheus")
    try:
        _wait_ready(on)
        _wait_ready(off)
        if binary:
            prom = Prometheus(binary, tmp / "prometheus", on.port)
        start = time.time()
        throughput: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
            for label, daemon in order:
                cfg = LoadConfig(
                    url=daemon.url + "/v1",
                    model="smollm2",
                    concurrency=16,
                    requests=16,
                    prompt_tokens=150,
                    max_tokens=128,
                    ignore_eos=True,
                    seed_salt=f"{label}-{r}",
                    label=label,
                )
                result = await run_load(cfg)
                assert result.ok == result.requests, asdict(result)
                throughput[label].append(round(result.output_tokens_per_s, 1))
                print(f"round {r} {label}: {result.output_tokens_per_s:.1f} tok/s", flush=True)
        t0 = time.monotonic()
        statuses = await _many_requests(on.url, args.requests, args.concurrency)
        many_s = time.monotonic() - t0
        print(f"{args.requests} requests in {many_s:.0f} s: {statuses}", flush=True)
        burst = await _burst(on.url, 40)
        print(f"burst of 40: {burst}", flush=True)
        scrapes = _time_scrapes(on.url, args.scrapes)
        print(f"/metrics: {scrapes}", flush=True)
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in _get(on.url + "/metrics").decode().splitlines()
            if line.startswith("llmd_requests_total{")
        )
        end = time.time()
        panels = []
        if prom is not None:
            time.sleep(5)  # one more scrape after the load
            panels = _panels(prom, start, end + 5)
        med_on, med_off = (statistics.median(throughput[k]) for k in ("on", "off"))
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_at_end": os.getloadavg(),
            },
            "note": "machines are noisy: compare the on/off ratio within this run",
            "throughput_16_streams_tok_s": throughput,
            "median_on_tok_s": med_on,
            "median_off_tok_s": med_off,
            "ratio_on_off": round(med_on / med_off, 3),
            "many_requests": {
                "requests": args.requests,
                "seconds": round(many_s, 1),
                "statuses": statuses,
                "requests_total_in_metrics": served,
            },
            "burst_40_gemma": burst,
            "metrics_scrape": scrapes,
            "panels": panels,
        }
    finally:
        for proc in (prom, on, off):
            if proc is not None:
                proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--prometheus", help="Prometheus binary (default: on PATH)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "observability.json"))
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "panels"}, indent=1))


if __name__ == "__main__":
    main()
