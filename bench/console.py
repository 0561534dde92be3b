"""What the web console costs (issue 17, docs/benchmarks.md "The web console").

    scripts/bench-console                          # 100,000 records, 7 paints, 16 clients x 4
    scripts/bench-console --records 1000 --paint-runs 2 --clients 2 --requests 4 \\
        --max-tokens 8 --repeats 1 --json /tmp/console-smoke.json      # a smoke test

One daemon serving both test models (smollm2, gemma3-270m; no keys on loopback: the console is
open), its usage database filled beforehand with `--records` realistic records over 30 days
(20 keys, both models, several endpoints, a few errors), and Debian's chromium driven by
Playwright (the flags of tests/browser.py):

- paint: the overview (`/ui/#overview`) opened `--paint-runs` times, each in a fresh browser
  context (an empty cache, as a first visit), after one warm-up: from the Performance API, the
  first contentful paint and the moment the overview's data is on the page (both models' rows
  and the charts, seen by a MutationObserver put in before the page's own scripts). Medians.
- throughput: `--clients` concurrent streams of `--max-tokens` tokens (bench/loadgen.py), each
  turn `--requests` requests (prompts of its own), after a turn not counted, with and without
  the console open, alternating which goes first:
  "with" is one browser window on the overview (which asks /api/v1/health and /api/v1/activity
  every 5 s by itself) and one on the usage page (the day, key and model aggregates over the
  whole table, and the audit log), reloaded every `--usage-every` s as a person would. Output
  tokens/s per turn, the ratio of the medians (with / without), the console's requests during
  each turn and the CPU seconds chromium used (the browser normally runs on another machine:
  here it shares this one's cores, so a ratio below 1 is an upper bound of the daemon's cost).

Numbers on a shared, noisy machine: compare within one run only; the load average at start and
end is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from playwright.async_api import Browser, BrowserContext, async_playwright

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import GEMMA, MODELS, SMOL, Daemon, start_daemon  # noqa: E402
from bench.harness import omp_policy  # noqa: E402
from bench.loadgen import LoadConfig, run_load  # noqa: E402
from llmd.usage.store import USAGE_COLUMNS, connect  # noqa: E402
from tests.browser import ARGS, CHROMIUM  # noqa: E402

MODEL_NAMES = ("smollm2", "gemma3-270m")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
ENDPOINT_SHARES = (0.75, 0.1, 0.1, 0.05)
RENDERED = """
(() => {
  // When the overview's data is on the page: every model's row and the charts.
  const done = () =>
    document.querySelectorAll("#ov-models tbody tr").length >= %d &&
    document.getElementById("ov-charts") !== null;
  new MutationObserver((_, observer) => {
    if (window.__llmdRendered === undefined && done()) {
      window.__llmdRendered = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true });
})();
"""
TIMINGS = """
() => {
  const paint = performance.getEntriesByName("first-contentful-paint")[0];
  const nav = performance.getEntriesByType("navigation")[0];
  return {
    fcp_ms: paint ? paint.startTime : null,
    rendered_ms: window.__llmdRendered,
    dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
  };
}
"""


def make_usage(path: Path, records: int) -> None:
    """`records` usage rows over the last 30 days, written as the daemon's writer would have."""
    rng = random.Random(17)
    start = time.time() - 30 * 86400
    step = 30 * 86400 / max(records, 1)
    insert = (
        f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
    )
    conn = connect(path)
    conn.execute("BEGIN")
    batch: list[tuple[Any, ...]] = []
    for n in range(records):
        endpoint = rng.choices(ENDPOINTS, ENDPOINT_SHARES)[0]
        embedding = endpoint == "/v1/embeddings"
        status = rng.choices((200, 429, 400, 500), (0.96, 0.025, 0.01, 0.005))[0]
        prompt = rng.randint(5, 2000) if status == 200 else 0
        completion = 0 if embedding or status != 200 else rng.randint(1, 500)
        latency = rng.uniform(30, 6000) if status == 200 else rng.uniform(1, 50)
        stream = int(not embedding and rng.random() < 0.6)
        batch.append(
            (
                start + n * step,
                f"req-{rng.getrandbits(96):024x}",
                f"key-{rng.randrange(20)}" if rng.random() > 0.05 else None,
                MODEL_NAMES[1] if rng.random() < 0.3 else MODEL_NAMES[0],
                endpoint,
                status,
                None if status == 200 else f"status {status}",
                stream,
                prompt,
                rng.randrange(prompt) if prompt and rng.random() < 0.5 else 0,
                completion,
                round(latency / 8, 3) if stream and status == 200 else None,
                round(latency, 3),
                f"10.0.0.{rng.randrange(2, 40)}",
                rng.choice(("hit", "miss")) if rng.random() < 0.1 else None,
            )
        )
        if len(batch) == 10_000:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)
    conn.execute("COMMIT")
    conn.close()


def start(tmp: Path, records: int) -> Daemon:
    database = tmp / "usage.db"
    make_usage(database, records)
    models_dir = tmp / "models"  # empty: the two models are the config's tables
    models_dir.mkdir(parents=True, exist_ok=True)
    config = (
        f'models_dir = "{models_dir}"\n'
        '[server]\ndefault_model = "smollm2"\nmax_queue = 64\n'
        "[engine]\nctx_per_seq = 512\nparallel = 16\n"
        f'[usage]\ndatabase = "{database}"\n'
        f'[models.smollm2]\npath = "{MODELS / SMOL}"\n'
        f'[models.gemma3-270m]\npath = "{MODELS / GEMMA}"\nparallel = 2\n'
    )
    return start_daemon(tmp, config, "/ready", 180)


async def paint(browser: Browser, url: str, runs: int) -> dict[str, Any]:
    """The overview's first paint and data, each in a fresh context (one warm-up first)."""
    rows: list[dict[str, Any]] = []
    for i in range(runs + 1):
        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        await context.add_init_script(RENDERED % len(MODEL_NAMES))
        page = await context.new_page()
        await page.goto(f"{url}/ui/#overview")
        # Polled from here: wait_for_function evaluates its predicate with eval() in the page,
        # which the console's CSP (no unsafe-eval) refuses once it has to poll.
        for _ in range(6000):
            if await page.evaluate("window.__llmdRendered !== undefined"):
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError("the overview's data was not rendered within 60 s")
        timings = await page.evaluate(TIMINGS)
        await context.close()
        if i == 0:
            continue  # the warm-up: chromium's own first start
        rows.append({k: round(v, 1) if v is not None else None for k, v in timings.items()})
        print(f"  paint {i}: {rows[-1]}", flush=True)

    def median(name: str) -> float | None:
        values = [r[name] for r in rows if r[name] is not None]
        return round(statistics.median(values), 1) if values else None

    return {
        "runs": rows,
        "median_fcp_ms": median("fcp_ms"),
        "median_rendered_ms": median("rendered_ms"),
    }


def browser_cpu_s() -> float:
    """CPU seconds used so far by this process's chromium processes (the browser's tree)."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in proc.name():
                cpu = proc.cpu_times()
                total += cpu.user + cpu.system
    return total


@contextlib.asynccontextmanager
async def console_open(browser: Browser, url: str, usage_every: float) -> AsyncIterator[list[str]]:
    """The console on the overview and on the usage page, in two windows, while the block
    runs; yields the list the console's requests are recorded in."""
    requests: list[str] = []
    contexts: list[BrowserContext] = []
    try:
        for name, ready in (("overview", "#ov-charts"), ("usage", "#usage-by-model")):
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            contexts.append(context)
            page = await context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(f"{url}/ui/#{name}")
            await page.locator(ready).wait_for(timeout=60_000)
        usage_page = contexts[1].pages[0]

        async def reload_usage() -> None:
            while usage_every > 0:
                await asyncio.sleep(usage_every)
                await usage_page.reload()
                await usage_page.locator("#usage-by-model").wait_for(timeout=60_000)

        reloader = asyncio.create_task(reload_usage())
        try:
            requests.clear()  # from here on: what the console asks while the load runs
            yield requests
        finally:
            reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
    finally:
        for context in contexts:
            await context.close()


async def throughput(browser: Browser, d: Daemon, args: argparse.Namespace) -> dict[str, Any]:
    labels = ("without", "with")
    tok_s: dict[str, list[float]] = {label: [] for label in labels}
    console_requests: list[int] = []
    browser_cpu: list[float] = []

    def load(label: str, salt: str) -> LoadConfig:
        return LoadConfig(
            url=d.url + "/v1",
            model="smollm2",
            concurrency=args.clients,
            requests=args.requests,
            max_tokens=args.max_tokens,
            prompt_tokens=100,
            ignore_eos=True,
            # Prompts of their own in every turn: one daemon serves all the turns, and a prompt
            # met before would be answered from its response cache or its KV cache.
            seed_salt=salt,
            label=label,
        )

    # A turn not counted: the first requests of a fresh daemon are slower (warm-up).
    await run_load(load("warm-up", "warm-up"))
    for i in range(args.repeats):
        for label in labels if i % 2 == 0 else labels[::-1]:
            cfg = load(label, f"r{i}-{label}")
            if label == "with":
                async with console_open(browser, d.url, args.usage_every) as seen:
                    cpu = browser_cpu_s()
                    run = await run_load(cfg)
                    browser_cpu.append(round(browser_cpu_s() - cpu, 2))
                    console_requests.append(len(seen))
            else:
                run = await run_load(cfg)
            assert run.errors == 0 and run.refusals == 0, run.error_samples
            tok_s[label].append(round(run.output_tokens_per_s, 1))
            print(f"  {label} console: {tok_s[label][-1]} tok/s", flush=True)
    med = {label: statistics.median(v) for label, v in tok_s.items()}
    return {
        "clients": args.clients,
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "usage_reload_every_s": args.usage_every,
        "runs_tok_s": tok_s,
        "median_tok_s": med,
        "ratio_with_over_without": round(med["with"] / med["without"], 3),
        "console_requests_per_run": console_requests,
        "browser_cpu_s_per_run": browser_cpu,
    }


async def measure(d: Daemon, args: argparse.Namespace) -> dict[str, Any]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            out = {"paint": await paint(browser, d.url, args.paint_runs)}
            print(json.dumps(out["paint"], indent=2), flush=True)
            out["throughput"] = await throughput(browser, d, args)
            print(json.dumps(out["throughput"], indent=2), flush=True)
            return out
        finally:
            await browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=100_000, help="usage records beforehand")
    p.add_argument("--paint-runs", type=int, default=7, help="overview loads (after a warm-up)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=128, help="requests per throughput turn")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=4, help="turns with and without the console")
    p.add_argument(
        "--usage-every", type=float, default=30.0, help="reload the usage page (s; 0: never)"
    )
    p.add_argument("--json", type=Path, help="default: bench/results/DATE-console.json")
    args = p.parse_args()
    omp_policy()
    out = args.json or ROOT / "bench" / "results" / f"{datetime.date.today()}-console.json"
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "records": args.records,
        "models": list(MODEL_NAMES),
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        made = time.perf_counter()
        d = start(Path(tmpdir), args.records)
        results["setup_s"] = round(time.perf_counter() - made, 1)
        try:
            results.update(asyncio.run(measure(d, args)))
        finally:
            d.stop()
    results["load_at_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
