"""What HTTPS costs against plain HTTP (docs/benchmarks.md, "TLS").

    scripts/bench-tls                          # 3 alternating rounds, 16 clients, 64 tokens
    scripts/bench-tls --repeats 2 --json bench/results/tls-DATE.json

- streams: two daemons on the same config and model, one serving HTTPS with a pair made by
  `llmd tls self-signed`, one plain HTTP, driven in turn (which goes first alternates) with 16
  concurrent streams of 64 tokens (bench/loadgen.py: a new connection, so a full handshake, per
  request). Aggregate output tokens/s and TTFT per run, the ratio of the medians.
- handshake: GET /health on a new connection each time, both daemons in alternating rounds:
  the median difference is what a TLS handshake (EC P-256, TLS 1.3) adds per connection.

Numbers on a shared, noisy machine: compare within one run only; the load average at start
and end is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import MODELS, SMOL, Daemon, start_daemon  # noqa: E402
from bench.harness import omp_policy  # noqa: E402
from bench.loadgen import LoadConfig, run_load  # noqa: E402

LABELS = ("https", "http")


def _daemon(tmp: Path, tls: bool) -> Daemon:
    models_dir = tmp / "models"  # empty: the one model is the config's table
    models_dir.mkdir(parents=True)
    pair = 'tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n' if tls else ""
    config = (
        f'models_dir = "{models_dir}"\n[server]\nmax_queue = 64\n{pair}'
        f"[engine]\nctx_per_seq = 512\nparallel = 16\n"
        f'[models.smollm2]\npath = "{MODELS / SMOL}"\n'
    )
    if tls:
        subprocess.run(
            [sys.executable, "-m", "llmd", "tls", "self-signed", "--host", "127.0.0.1",
             "--out", str(tmp / "tls")],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
    return start_daemon(tmp, config, "/ready", 180, ca=tmp / "tls" / "cert.pem" if tls else None)


async def streams(daemons: dict[str, Daemon], repeats: int, tokens: int) -> dict[str, Any]:
    tok_s: dict[str, list[float]] = {label: [] for label in LABELS}
    ttft: dict[str, list[float]] = {label: [] for label in LABELS}
    for i in range(repeats):
        for label in LABELS if i % 2 == 0 else LABELS[::-1]:
            d = daemons[label]
            cfg = LoadConfig(
                url=d.url + "/v1",
                concurrency=16,
                requests=32,
                max_tokens=tokens,
                prompt_tokens=100,
                ignore_eos=True,
                seed_salt=f"r{i}",
                label=label,
                cafile=str(d.ca) if d.ca else None,
            )
            run = await run_load(cfg)
            assert run.errors == 0 and run.refusals == 0, run.error_samples
            tok_s[label].append(round(run.output_tokens_per_s, 1))
            ttft[label].append(round(run.ttft_ms.p50 or 0.0, 1))
            print(f"  {label}: {tok_s[label][-1]} tok/s, TTFT p50 {ttft[label][-1]} ms", flush=True)
    med = {label: statistics.median(v) for label, v in tok_s.items()}
    return {
        "clients": 16,
        "requests_per_run": 32,
        "max_tokens": tokens,
        "runs_tok_s": tok_s,
        "runs_ttft_p50_ms": ttft,
        "median_tok_s": med,
        "ratio_https_over_http": round(med["https"] / med["http"], 3),
    }


async def handshake(daemons: dict[str, Daemon], rounds: int, per_round: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {label: [] for label in LABELS}
    contexts = {label: daemons[label].ssl_context for label in LABELS}
    for _ in range(rounds):
        for label in LABELS:
            connector = aiohttp.TCPConnector(force_close=True, ssl=contexts[label] or True)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    async with session.get(daemons[label].url + "/health") as resp:
                        await resp.read()
                        assert resp.status == 200
                    times[label].append(time.perf_counter() - t0)
    med = {label: round(statistics.median(v) * 1000, 3) for label, v in times.items()}
    return {
        "requests_each": len(times["http"]),
        "median_ms": med,
        "added_ms": round(med["https"] - med["http"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3, help="16-client runs per contender")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10, help="handshake: alternating rounds")
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    omp_policy()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        daemons = {"https": _daemon(tmp / "s", True), "http": _daemon(tmp / "p", False)}
        try:
            results["streams"] = asyncio.run(streams(daemons, args.repeats, args.max_tokens))
            print(json.dumps(results["streams"], indent=2), flush=True)
            results["handshake"] = asyncio.run(handshake(daemons, args.rounds, args.per_round))
            print(json.dumps(results["handshake"], indent=2), flush=True)
        finally:
            for d in daemons.values():
                d.stop()
    results["load_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
