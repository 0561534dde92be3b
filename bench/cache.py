"""What the response cache gives and costs (docs/benchmarks.md, "The response cache").

    .venv/bin/python bench/cache.py                                  # the defaults below
    .venv/bin/python bench/cache.py --json bench/results/cache-DATE.json

Three daemons on one model (SmolLM2), started side by side and measured one at a time: the
cache in memory, the cache in a real redis-server (started here, on a free port), and the
cache off. Greedy chat completions, not streamed, `max_tokens` 32, a user message that
differs per request so each first asking is a real miss.

1. **Hit against miss**, for each backend, at 1 client (sequential) and at 16 (concurrent):
   every prompt asked once (misses: the model runs), then asked again `--hit-repeats` times
   (hits). Latency p50 and p99 of each, and their ratio; every hit's content is checked to
   equal its miss's.
2. **The cache's own work**, timed in this process apart from everything else: the key, the
   entry encoded and decoded (`miss_path`).
3. **The cost of a miss**, cache on (memory) against off: rounds of 16 clients alternating
   between the two daemons (the order swapped each round), all misses. Output tokens/s of
   each (noisy on a shared 2-core machine: read the ratio over rounds), and the CPU time the
   daemon process itself spent per request: the cache's work (the request's key, recording
   the events, encoding and storing the entry) is in the daemon, apart from the model's,
   which is the same with the cache on or off.

Numbers on a shared, noisy machine: compare within one run only; the load average at start and
end is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import MODELS, SMOL, Daemon, start_daemon  # noqa: E402
from bench.harness import omp_policy  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SYSTEM = "You are a helpful assistant for a small office. Answer briefly."


def _body(tag: str, index: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Request {tag}-{index}: list {index % 7 + 2} fruits."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def _ask(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, str, str, int]:
    """(latency s, x-llmd-cache, content, completion tokens) of one request."""
    t0 = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {data}")
        cache = resp.headers.get("x-llmd-cache", "")
    latency = time.perf_counter() - t0
    content = data["choices"][0]["message"]["content"]
    return latency, cache, content, int(data["usage"]["completion_tokens"])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 0.5) * 1000, 2),
        "p99_ms": round(_pct(values, 0.99) * 1000, 2),
    }


async def hit_vs_miss(
    daemon: Daemon, tag: str, clients: int, per_client: int, hit_repeats: int, tokens: int
) -> dict[str, Any]:
    """Every prompt once (misses), then again `hit_repeats` times (hits), `clients` at once."""
    bodies = [_body(tag, i, tokens) for i in range(clients * per_client)]
    answers: dict[int, str] = {}
    misses: list[float] = []
    hits: list[float] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(c: int, first: bool) -> None:
            for r in range(per_client):
                i = c * per_client + r
                latency, cache, content, _ = await _ask(session, daemon.url, bodies[i])
                if first:
                    if cache != "miss":
                        raise RuntimeError(f"request {i}: expected a miss, got {cache!r}")
                    answers[i] = content
                    misses.append(latency)
                else:
                    if cache != "hit" or content != answers[i]:
                        raise RuntimeError(
                            f"request {i}: {cache!r}, content equal: {content == answers[i]}"
                        )
                    hits.append(latency)

        await asyncio.gather(*(client(c, True) for c in range(clients)))
        for _ in range(hit_repeats):
            await asyncio.gather(*(client(c, False) for c in range(clients)))
    miss, hit = _summary(misses), _summary(hits)
    return {
        "clients": clients,
        "miss": miss,
        "hit": hit,
        "hit_over_miss_p50": round(hit["p50_ms"] / miss["p50_ms"], 4),
        "hit_over_miss_p99": round(hit["p99_ms"] / miss["p99_ms"], 4),
    }


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the daemon process alone, and of its model processes."""
    proc = psutil.Process(pid)
    own = proc.cpu_times()
    children = 0.0
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        children += t.user + t.system
    return own.user + own.system, children


async def miss_round(
    daemon: Daemon, tag: str, clients: int, per_client: int, tokens: int, expect: str
) -> dict[str, Any]:
    bodies = [_body(tag, i, tokens) for i in range(clients * per_client)]
    out = 0
    cpu0, model0 = _cpu(daemon.proc.pid)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(c: int) -> None:
            nonlocal out
            for r in range(per_client):
                _, cache, _, completion = await _ask(
                    session, daemon.url, bodies[c * per_client + r]
                )
                if cache != expect:
                    raise RuntimeError(f"expected {expect!r}, got {cache!r}")
                out += completion

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    cpu1, model1 = _cpu(daemon.proc.pid)
    n = len(bodies)
    return {
        "tok_s": round(out / wall, 1),
        "daemon_cpu_ms_per_request": round((cpu1 - cpu0) / n * 1000, 2),
        "model_cpu_ms_per_request": round((model1 - model0) / n * 1000, 1),
    }


async def miss_cost(
    on: Daemon, off: Daemon, rounds: int, clients: int, per_client: int, tokens: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(rounds):
        order = [("on", on, "miss"), ("off", off, "")]
        if i % 2:
            order.reverse()
        for name, daemon, expect in order:
            # The same prompts for both in a round: equal work, each a miss on its daemon.
            run = await miss_round(daemon, f"cost{i}", clients, per_client, tokens, expect)
            runs[name].append(run)
            print(f"  round {i} cache {name}: {run}", flush=True)

    def med(name: str, field: str) -> float:
        return float(statistics.median(r[field] for r in runs[name]))

    on_cpu, off_cpu = (
        med("on", "daemon_cpu_ms_per_request"),
        med("off", "daemon_cpu_ms_per_request"),
    )
    model_cpu = med("off", "model_cpu_ms_per_request")
    return {
        "runs": runs,
        "tok_s_on_over_off": round(med("on", "tok_s") / med("off", "tok_s"), 4),
        "tok_s_ratios_per_round": [
            round(a["tok_s"] / b["tok_s"], 4) for a, b in zip(runs["on"], runs["off"], strict=True)
        ],
        "daemon_cpu_ms_on": on_cpu,
        "daemon_cpu_ms_off": off_cpu,
        "model_cpu_ms": model_cpu,
        "cache_cpu_share_of_request": round((on_cpu - off_cpu) / (off_cpu + model_cpu), 5),
    }


def miss_path() -> dict[str, float]:
    """The cache's own work on a miss and a hit, timed apart from everything else: the key of
    a chat request (a 1,200-character prompt after its template), its 32 deltas encoded and
    kept in the memory backend, and read back and decoded (microseconds each, median of 5
    runs of 2,000)."""
    import timeit

    from llmd.cache.entry import decode_runs, encode_runs
    from llmd.cache.keys import request_key
    from llmd.cache.store import MemoryStore
    from llmd.engine import messages as m
    from llmd.sampling import resolve

    req = m.GenerateRequest(
        id="x", prompt="<|im_start|>user\n" + "word " * 240, sampling=resolve(), stop=["\n\n"]
    )
    events: list[object] = [m.Started("x", 300, 32), m.Admitted("x", 0)]
    events += [m.Delta("x", 0, " word", 1) for _ in range(31)]
    events.append(m.Delta("x", 0, ".", 1, finish_reason="length"))
    store = MemoryStore(1 << 30)
    entry = encode_runs([events])

    def us(fn: Callable[[], object]) -> float:
        runs = timeit.repeat(fn, number=2000, repeat=5)
        return round(statistics.median(runs) / 2000 * 1e6, 1)

    def put() -> None:
        # The memory backend never awaits: its coroutine runs to its end on the first send.
        try:
            store.put("key:a", "k", entry, 60).send(None)
        except StopIteration:
            pass

    return {
        "key_us": us(lambda: request_key("identity", [req])),
        "encode_us": us(lambda: encode_runs([events])),
        "put_us": us(put),
        "decode_us": us(lambda: decode_runs(entry, ["y"], [1])),
        "entry_bytes": len(entry),
    }


def _config(models_dir: Path, cache: str) -> str:
    return (
        f'models_dir = "{models_dir}"\n[server]\nmax_queue = 64\n'
        f"[engine]\nctx_per_seq = 512\nparallel = 16\n"
        f"[usage]\nenabled = false\n"
        f"[cache]\n{cache}\n"
        f'[models.smollm2]\npath = "{MODELS / SMOL}"\n'
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--per-client", type=int, default=3, help="distinct prompts per client")
    p.add_argument("--hit-repeats", type=int, default=5, help="times each prompt is asked again")
    p.add_argument("--rounds", type=int, default=6, help="miss-cost rounds (on and off each)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--miss-cost-only", action="store_true", help="skip hit against miss")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    omp_policy()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    results["miss_path"] = miss_path()
    print(f"the cache's own work: {results['miss_path']}", flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        models_dir = tmp / "models"  # empty: the one model is the config's table
        models_dir.mkdir()
        redis = RedisServer(tmp / "redis")
        redis.start()
        daemons: dict[str, Daemon] = {}
        try:
            for name, cache in (
                ("memory", 'backend = "memory"'),
                ("redis", f'backend = "redis"\nredis_url = "{redis.url}"'),
                ("off", "enabled = false"),
            ):
                daemons[name] = start_daemon(tmp / name, _config(models_dir, cache), "/ready", 180)
            # A warm-up each: the first request pays for the model's first use.
            for name, daemon in daemons.items():
                asyncio.run(miss_round(daemon, "warm", 1, 1, 8, "" if name == "off" else "miss"))
            latency: dict[str, Any] = {}
            for backend in () if args.miss_cost_only else ("memory", "redis"):
                for clients in (1, 16):
                    per_client = args.per_client * (4 if clients == 1 else 1)
                    tag = f"{backend}{clients}"
                    res = asyncio.run(
                        hit_vs_miss(
                            daemons[backend],
                            tag,
                            clients,
                            per_client,
                            args.hit_repeats,
                            args.max_tokens,
                        )
                    )
                    latency[f"{backend}_{clients}"] = res
                    print(f"{backend}, {clients} client(s): {res}", flush=True)
            results["hit_vs_miss"] = latency
            results["miss_cost"] = asyncio.run(
                miss_cost(
                    daemons["memory"],
                    daemons["off"],
                    args.rounds,
                    16,
                    args.per_client,
                    args.max_tokens,
                )
            )
        finally:
            for daemon in daemons.values():
                daemon.stop()
            redis.stop()
    results["load_at_end"] = os.getloadavg()
    summary = {
        "miss_path": results["miss_path"],
        "hit_vs_miss": results["hit_vs_miss"],
        "miss_cost": {k: v for k, v in results["miss_cost"].items() if k != "runs"},
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
