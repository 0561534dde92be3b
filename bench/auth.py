"""What keys, limits and usage records cost, and what fair sharing gives (docs/auth.md).

    scripts/bench-auth                 # all four parts
    scripts/bench-auth --part overhead # one part: overhead | streams | fairness | checks

- overhead: the same app (`create_app`, no model needed) twice in this process: "secured" (a
  key with rpm/tpm/concurrency limits, usage records committed to SQLite before each response)
  and "open" (no key, usage off). GET /v1/models in alternating rounds; the difference of the
  medians is what authentication, limits and usage recording add per request.
- streams: two real daemons, one secured, one open, driven in turn with 16 concurrent streams
  (bench/loadgen.py); the ratio of aggregate output tokens/s, same run.
- fairness: a daemon with 2 slots; key A floods 16 requests, then key B sends one. B's latency
  and how many of A's requests finished before it, against the same single request sent with
  A's key (what first-come-first-served would give).
- checks: what a refused key costs, against a real daemon with one key and no model. Timing:
  wrong key ids and wrong secrets for the real id, alternating, one at a time (failure delays
  off, so only the check is timed); the two medians should be within 5%. Burn: 32 parallel
  connections x 5 wrong secrets each with the default failure delays; the daemon's CPU-seconds
  (psutil, all its threads) and the statuses. `--checkout DIR` runs another source tree's llmd
  (e.g. a `git worktree` of the commit before the change) for the "before" numbers.

Numbers on a shared, noisy machine: compare within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import MODELS, SMOL, Daemon, free_port, start_daemon  # noqa: E402
from bench.harness import omp_policy  # noqa: E402
from bench.loadgen import LoadConfig, run_load  # noqa: E402
from llmd.auth.keys import add_key  # noqa: E402
from llmd.models import ModelManager  # noqa: E402
from llmd.server.app import create_app  # noqa: E402
from llmd.settings_file import load_settings  # noqa: E402


def _config_text(extra: str = "", parallel: int = 16) -> str:
    return (
        f"[engine]\nctx_per_seq = 512\nparallel = {parallel}\n[server]\nmax_queue = 64\n"
        f'[models.smollm2]\npath = "{MODELS / SMOL}"\n{extra}'
    )


def _config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "llmd.toml"
    path.write_text(_config_text(extra))
    return path


def _secured_and_open(tmp: Path) -> str:
    """TMP/s, for the secured side, with a key of very high limits in its keys.toml, and
    TMP/o for the open side; the key's secret."""
    (tmp / "s").mkdir()
    (tmp / "o").mkdir()
    _, secret = add_key(tmp / "s" / "keys.toml", "bench", rpm=10**6, tpm=10**9, concurrency=1000)
    return secret


# -- overhead ------------------------------------------------------------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def overhead(rounds: int, per_round: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        secret = _secured_and_open(tmp)
        secured = load_settings(_config(tmp / "s"))
        open_ = load_settings(_config(tmp / "o", "[usage]\nenabled = false\n"))
        runners = []
        urls = {}
        for label, settings in (("secured", secured), ("open", open_)):
            runner, url = await _serve(create_app(settings, ModelManager(settings)))
            runners.append(runner)
            urls[label] = url
        times: dict[str, list[float]] = {"secured": [], "open": []}
        headers = {"secured": {"Authorization": f"Bearer {secret}"}, "open": {}}
        async with aiohttp.ClientSession() as session:
            for label in ("secured", "open"):  # warm-up (the first key check runs scrypt)
                for _ in range(20):
                    async with session.get(urls[label] + "/v1/models", headers=headers[label]) as r:
                        assert r.status == 200, await r.text()
            for _ in range(rounds):
                for label in ("secured", "open"):
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        async with session.get(
                            urls[label] + "/v1/models", headers=headers[label]
                        ) as r:
                            await r.read()
                        times[label].append(time.perf_counter() - t0)
        for runner in runners:
            await runner.cleanup()
        conn = sqlite3.connect(secured.usage.database or "")
        db_rows = int(conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
        conn.close()
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "requests_each": len(times["secured"]),
        "median_ms": med,
        "p90_ms": {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in times.items()},
        "overhead_median_ms": med["secured"] - med["open"],
        "usage_rows_written": db_rows,
        "usage_rows_expected": len(times["secured"]) + 20,
    }


# -- 16 streams ----------------------------------------------------------------------------


def _daemon(tmp: Path, extra: str, parallel: int = 16) -> Daemon:
    models_dir = tmp / "models"  # empty: the one model is the config's table
    models_dir.mkdir(parents=True)
    config = f'models_dir = "{models_dir}"\n' + _config_text(extra, parallel)
    return start_daemon(tmp, config, "/ready", 180)


async def streams(repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        secret = _secured_and_open(tmp)
        daemons = {
            "secured": (_daemon(tmp / "s", ""), secret),
            "open": (_daemon(tmp / "o", "[usage]\nenabled = false\n"), None),
        }
        results: dict[str, list[float]] = {"secured": [], "open": []}
        try:
            for i in range(repeats):
                order = ("secured", "open") if i % 2 == 0 else ("open", "secured")
                for label in order:
                    daemon, key = daemons[label]
                    cfg = LoadConfig(
                        url=daemon.url + "/v1",
                        api_key=key,
                        concurrency=16,
                        requests=16,
                        max_tokens=64,
                        prompt_tokens=100,
                        ignore_eos=True,
                        seed_salt=f"r{i}",
                        label=label,
                    )
                    run = await run_load(cfg)
                    assert run.errors == 0 and run.refusals == 0, run.error_samples
                    results[label].append(run.output_tokens_per_s)
        finally:
            for daemon, _ in daemons.values():
                daemon.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "runs_tok_s": results,
        "median_tok_s": med,
        "ratio_secured_over_open": med["secured"] / med["open"],
    }


# -- fairness ------------------------------------------------------------------------------


async def fairness(flood: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        _, key_a = add_key(tmp / "keys.toml", "a")
        _, key_b = add_key(tmp / "keys.toml", "b")
        daemon = _daemon(tmp, "", parallel=2)
        out: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as session:

                async def one(key: str, tag: str, done: list[tuple[str, float]]) -> None:
                    body = {
                        "model": "smollm2",
                        "prompt": "The capital of France is",
                        "max_tokens": 32,
                        "ignore_eos": True,
                    }
                    headers = {"Authorization": f"Bearer {key}"}
                    async with session.post(
                        daemon.url + "/v1/completions", json=body, headers=headers
                    ) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                    done.append((tag, time.perf_counter()))

                for label, single_key in (("other key (B)", key_b), ("same key (A)", key_a)):
                    done: list[tuple[str, float]] = []
                    tasks = [asyncio.create_task(one(key_a, "A", done)) for _ in range(flood)]
                    await asyncio.sleep(1.0)  # the flood is queued
                    t0 = time.perf_counter()
                    await one(single_key, "single", done)
                    latency = time.perf_counter() - t0
                    await asyncio.gather(*tasks)
                    tags = [t for t, _ in done]
                    out[label] = {
                        "single_latency_s": round(latency, 3),
                        "flood_finished_before_single": tags.index("single"),
                    }
        finally:
            daemon.stop()
    return out


# -- refused keys --------------------------------------------------------------------------


def _keys_daemon(work: Path, auth: str, checkout: Path) -> tuple[Daemon, str]:
    """A daemon with no model and one key (in WORK/keys.toml, next to its config); the key's
    secret."""
    work.mkdir(parents=True)
    (work / "models").mkdir()
    _, secret = add_key(work / "keys.toml", "bench")
    config = f'models_dir = "{work / "models"}"\n[auth]\n{auth}'
    return start_daemon(work, config, "/health", 60, checkout=checkout), secret


def _wrong(secret: str, n: int, same_id: bool) -> str:
    """A secret of the same shape: the key's id with another tail, or another id."""
    key_id, tail = secret.split("_", 1)
    if not same_id:
        key_id = f"sk-llmd-{n:012x}"
    return f"{key_id}_{n:08d}{tail[8:]}"


async def checks(attempts: int, checkout: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"checkout": str(checkout)}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        daemon, secret = _keys_daemon(tmp / "t", "failure_delay_s = 0\n", checkout)
        try:
            times: dict[str, list[float]] = {"wrong_id": [], "wrong_secret": []}
            async with aiohttp.ClientSession() as session:
                for i in range(attempts + 5):
                    for label in ("wrong_id", "wrong_secret"):
                        guess = _wrong(secret, i, same_id=label == "wrong_secret")
                        headers = {"Authorization": f"Bearer {guess}"}
                        t0 = time.perf_counter()
                        async with session.get(daemon.url + "/v1/models", headers=headers) as r:
                            await r.read()
                            assert r.status == 401, r.status
                        if i >= 5:  # the first few warm up
                            times[label].append(time.perf_counter() - t0)
        finally:
            daemon.stop()
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        out["timing"] = {
            "attempts_each": attempts,
            "median_ms": med,
            "mean_ms": {k: statistics.fmean(v) * 1000 for k, v in times.items()},
            "difference_of_medians_pct": 100
            * abs(med["wrong_id"] - med["wrong_secret"])
            / med["wrong_secret"],
        }
        daemon, secret = _keys_daemon(tmp / "b", "", checkout)
        try:
            proc = psutil.Process(daemon.proc.pid)
            await asyncio.sleep(1.0)  # start-up done
            statuses: dict[int, int] = {}

            async def connection(session: aiohttp.ClientSession, c: int) -> None:
                for a in range(5):
                    headers = {"Authorization": f"Bearer {_wrong(secret, c * 5 + a, True)}"}
                    async with session.get(daemon.url + "/v1/models", headers=headers) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.perf_counter()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
                await asyncio.gather(*(connection(session, c) for c in range(32)))
            wall = time.perf_counter() - t0
            cpu = sum(proc.cpu_times()[:2]) - cpu0
        finally:
            daemon.stop()
        out["burn"] = {
            "connections": 32,
            "attempts": 160,
            "statuses": statuses,
            "wall_s": round(wall, 2),
            "daemon_cpu_s": round(cpu, 2),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--part", choices=("overhead", "streams", "fairness", "checks"), action="append")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--repeats", type=int, default=4, help="16-stream runs per contender")
    p.add_argument("--flood", type=int, default=16)
    p.add_argument("--attempts", type=int, default=50, help="timed refusals of each kind")
    p.add_argument("--checkout", type=Path, default=ROOT, help="the llmd source tree to run")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    parts = args.part or ["overhead", "streams", "fairness", "checks"]
    omp_policy()
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    if "overhead" in parts:
        results["overhead"] = asyncio.run(overhead(args.rounds, args.per_round))
        print(json.dumps(results["overhead"], indent=2), flush=True)
    if "streams" in parts:
        results["streams"] = asyncio.run(streams(args.repeats))
        print(json.dumps(results["streams"], indent=2), flush=True)
    if "fairness" in parts:
        results["fairness"] = asyncio.run(fairness(args.flood))
        print(json.dumps(results["fairness"], indent=2), flush=True)
    if "checks" in parts:
        results["checks"] = asyncio.run(checks(args.attempts, args.checkout))
        print(json.dumps(results["checks"], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
