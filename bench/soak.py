"""Soak and fault test (issue 19; docs/benchmarks.md, "Soak"): not part of any CI run.

One daemon serves SmolLM2 with keys required, for `--minutes` (default 60):
- 16 clients, each with a key of its own made through the admin API (two of them with a low
  `rpm`, so refusals are met too), send a mix without pause: streamed and plain chat and
  completions, embeddings, and streams their client closes after a few chunks (cancellations);
  each request carries its own `X-Request-Id`, which its usage row keeps;
- every `--reload-every` seconds the config is rewritten (a sampling default toggled) and the
  daemon gets SIGHUP; every `--swap-every` seconds the model file in the watched models_dir is
  replaced by a fresh copy (a hot swap); every `--kill-every` seconds the model process (its pid
  from /api/v1/health) is killed with SIGKILL;
- every `--sample-every` seconds, the RSS, open files and threads of the daemon and of every
  model process, and how long /health takes.
Reported (JSON via bench.report.write_results, a summary on stdout): the first- and
last-quarter medians of each sampled measure; what every request came to (completed,
cancelled, refused, failed in the error shape, or not: cut without its end, no error shape,
no answer within the request timeout); the faults and how long the model took to serve again;
the usage rows (SQLite, and GET /api/v1/usage by key) against the requests the clients got an
answer to, per key, request by request; the daemon log's ERROR lines.

    scripts/soak                  # the hour
    scripts/soak --minutes 8      # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp

from bench.daemon import MODELS, SMOL, Daemon, start_daemon
from bench.harness import omp_policy
from bench.report import write_results
from bench.soakclient import KINDS, Client, auth
from bench.soakstats import (
    Outcome,
    Sampler,
    flatness,
    log_errors,
    outcomes_summary,
    per_process,
    reconcile,
)

MODEL = "smollm2"
FILE = "smol.gguf"
REQUEST_TIMEOUT_S = 120
LIMITED_KEYS = 2
"""The last clients' keys have a low rpm: 429s are answered, and recorded, too."""


def config(work: Path, reloads: int) -> str:
    """The daemon's config; `reloads` changes a sampling default and a comment only."""
    return f"""# soak config, rewritten by reload {reloads}
models_dir = "{work / "models"}"
[server]
max_queue = 16
request_timeout_s = {REQUEST_TIMEOUT_S}
[engine]
ctx_per_seq = 1024
parallel = 8
threads = 1
threads_batch = 2
[auth]
require_auth = true
[usage]
database = "{work / "usage.db"}"
[models.{MODEL}]
path = "{FILE}"
[models.{MODEL}.sampling]
temperature = {0.7 if reloads % 2 == 0 else 0.8}
"""


class Soak:
    """One run: the daemon, its keys, the clients, the faults and the sampler."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.seconds = args.minutes * 60
        self.outcomes: list[Outcome] = []
        self.events: list[dict[str, Any]] = []
        self.reloads = 0
        (work / "models").mkdir()
        shutil.copyfile(MODELS / SMOL, work / "models" / FILE)
        (work / "llmd.toml").write_text(config(work, 0))
        self.admin = self._admin_key()
        self.daemon: Daemon = start_daemon(work, config(work, 0))
        self.t0 = time.monotonic()

    def _admin_key(self) -> str:
        """An admin key made with the CLI before the daemon starts (the others come through
        the admin API)."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "llmd",
                "keys",
                "add",
                "soak-admin",
                "--admin",
                "--config",
                str(self.work / "llmd.toml"),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    async def admin_json(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> Any:
        async with session.request(
            method, self.daemon.url + path, json=body, headers=auth(self.admin)
        ) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    async def make_keys(self, session: aiohttp.ClientSession) -> list[tuple[str, str]]:
        keys = []
        for i in range(self.args.clients):
            body: dict[str, Any] = {"name": f"soak-{i:02d}", "models": [MODEL]}
            if i >= self.args.clients - LIMITED_KEYS:
                body["rpm"] = 6
            made = await self.admin_json(session, "POST", "/api/v1/keys", body)
            keys.append((body["name"], str(made["secret"])))
        return keys

    async def model(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        health = await self.admin_json(session, "GET", "/api/v1/health")
        return next(m for m in health["models"] if m["name"] == MODEL)

    async def serving_again(self, session: aiohttp.ClientSession, old_pid: int) -> float | None:
        """Seconds until a process other than `old_pid` serves the model (None: not in 180 s)."""
        start = time.monotonic()
        while time.monotonic() - start < 180:
            with_errors = True
            try:
                m = await self.model(session)
                with_errors = False
            except (aiohttp.ClientError, RuntimeError, StopIteration):
                pass
            if not with_errors and m["pid"] not in (None, old_pid) and m["state"] == "ready":
                return time.monotonic() - start
            await asyncio.sleep(0.25)
        return None

    # -- faults ----------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        a, end = self.args, self.seconds - 20  # nothing in the last 20 s: let it settle
        swap = a.swap_every or min(600.0, self.seconds / 3)
        kill = a.kill_every or min(900.0, self.seconds / 2.5)
        plan = [(t, "reload") for t in _times(a.reload_every, 1.0, end)]
        plan += [(t, "swap") for t in _times(swap, 0.5, end)]
        plan += [(t, "kill") for t in _times(kill, 0.8, end)]
        return sorted(plan)

    async def faults(self, session: aiohttp.ClientSession) -> None:
        for at, name in self.schedule():
            await asyncio.sleep(max(0.0, at - self.elapsed()))
            started = self.elapsed()
            event: dict[str, Any] = {"event": name, "at_s": round(started, 1)}
            try:
                if name == "reload":
                    self.reloads += 1
                    text = config(self.work, self.reloads)
                    await asyncio.to_thread((self.work / "llmd.toml").write_text, text)
                    os.kill(self.daemon.proc.pid, signal.SIGHUP)
                else:
                    old = int((await self.model(session))["pid"])
                    if name == "swap":
                        await asyncio.to_thread(_replace_model, self.work / "models")
                    else:
                        os.kill(old, signal.SIGKILL)
                    event["old_pid"] = old
                    event["serving_again_s"] = await self.serving_again(session, old)
                    event["new_pid"] = (await self.model(session))["pid"]
            except Exception as exc:  # a fault that could not be made is reported, not fatal
                event["error"] = f"{type(exc).__name__}: {exc}"
            self.events.append(event)
            print(f"[soak {self.elapsed():7.1f}s] {event}", flush=True)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=None)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            keys = await self.make_keys(session)
            await asyncio.sleep(1.5)  # the daemon re-reads keys.toml within a second
            sampler = Sampler(
                self.daemon.proc.pid, self.daemon.url, self.admin, self.args.sample_every
            )
            self.t0 = sampler.t0
            deadline = self.t0 + self.seconds
            clients = [
                Client(session, self.daemon.url, name, secret, i, REQUEST_TIMEOUT_S + 30)
                for i, (name, secret) in enumerate(keys)
            ]
            faults = asyncio.create_task(self.faults(session))
            await asyncio.gather(*(c.run(deadline, self.t0, self.outcomes) for c in clients))
            faults.cancel()
            samples = sampler.stop()
            await asyncio.sleep(2)  # rows of the last cancelled streams
            since = int(time.time() - self.elapsed() - 60)
            api = await self.admin_json(
                session, "GET", f"/api/v1/usage?group_by=key&since={since}&limit=1000"
            )
        return {"samples": samples, "usage_api": api}

    def finish(self, run: dict[str, Any]) -> dict[str, Any]:
        """Stop the daemon (its rows all committed), then read the rows and the log."""
        self.daemon.stop()
        db = sqlite3.connect(f"file:{self.work / 'usage.db'}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        rows = [
            dict(r)
            for r in db.execute(
                "SELECT request_id, key, status, error, prompt_tokens, completion_tokens "
                "FROM usage WHERE request_id LIKE 'soak-%'"
            )
        ]
        db.close()
        rec = reconcile(self.outcomes, rows)
        api_rows = {r["key"]: r["requests"] for r in run["usage_api"]["data"] if r.get("key")}
        for key, counts in rec.per_key.items():
            counts["api_requests"] = int(api_rows.get(key, -1))
        log = self.daemon.logs()
        samples = run["samples"]
        return {
            "minutes": self.args.minutes,
            "clients": self.args.clients,
            "kinds": KINDS,
            "flatness": flatness(samples),
            "model_processes": per_process(samples),
            "outcomes": outcomes_summary(self.outcomes),
            "events": self.events,
            "reloads_sent": self.reloads,
            "reloads_logged": log.count("configuration reloaded"),
            "usage": asdict(rec),
            "log_errors": log_errors(log),
            "samples": samples,
        }


def _times(every: float, offset: float, end: float) -> list[float]:
    """every x (k + offset) for k = 0, 1, ... before `end`."""
    out, k = [], 0
    while every > 0 and every * (k + offset) < end:
        out.append(every * (k + offset))
        k += 1
    return out


def _replace_model(models: Path) -> None:
    """A new version of the file, renamed over the old one (as docs/models.md says to)."""
    tmp = models / ".smol.tmp"
    shutil.copyfile(MODELS / SMOL, tmp)
    os.replace(tmp, models / FILE)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.soak", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--reload-every", type=float, default=60.0, help="seconds between SIGHUPs")
    # 0: min(600, run / 3) for swaps, min(900, run / 2.5) for kills.
    p.add_argument("--swap-every", type=float, default=0.0, help="seconds between file swaps")
    p.add_argument("--kill-every", type=float, default=0.0, help="seconds between kills")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="work folder kept (log, usage.db)")
    args = p.parse_args()
    args.model, args.threads, args.threads_batch = MODELS / SMOL, 1, 2
    return args


def main() -> int:
    args = parse_args()
    omp_policy()
    load_start = os.getloadavg()
    with TemporaryDirectory(prefix="llmd-soak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        soak = Soak(args, work)
        try:
            run = asyncio.run(soak.run())
        finally:
            soak.daemon.stop()
        result = soak.finish(run)
    print(report(result))
    write_results(
        args.json, "soak", args, load_average={"start": load_start, "end": os.getloadavg()},
        config=config(Path("WORK"), 0), **result,
    )  # fmt: skip
    return 0


def report(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['minutes']:g} min, {r['clients']} clients", "", "flatness (q1 -> q4):"]
    for name, f in r["flatness"].items():
        lines.append(
            f"  {name:16s} {f['q1_median']:14,.1f} -> {f['q4_median']:14,.1f} "
            f"({f['q4_over_q1']:.3f}x; min {f['min']:,.1f}, max {f['max']:,.1f})"
        )
    o = r["outcomes"]
    lines += ["", f"requests: {o['requests']}, {o['by_result']}", f"statuses: {o['statuses']}"]
    lines += [f"error codes: {o['error_codes']}", f"not clean: {len(o['not_clean'])}"]
    lines += [f"  {bad}" for bad in o["not_clean"][:10]]
    lines += ["", f"reloads sent {r['reloads_sent']}, logged {r['reloads_logged']}"]
    lines += [f"  {e}" for e in r["events"] if e["event"] != "reload" or "error" in e]
    u = r["usage"]
    lines += ["", "usage rows per key (answered / rows / API):"]
    for key, c in u["per_key"].items():
        lines.append(f"  {key}: {c['answered']} / {c['rows']} / {c['api_requests']}")
    lines.append(
        f"missing {len(u['missing'])}, extra {len(u['extra'])}, duplicates "
        f"{len(u['duplicates'])}, status differs {u['status_differs']}, tokens checked "
        f"{u['tokens_checked']}, mismatched {len(u['token_mismatches'])}"
    )
    lines += ["", "daemon log, ERROR lines and tracebacks:"]
    lines += [f"  {n} x {what}" for what, n in r["log_errors"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
