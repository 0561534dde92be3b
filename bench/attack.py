"""Hostile prompts against four streaming clients: issue 19's tokenization bound
(docs/benchmarks.md, "Hostile prompts").

One daemon serves SmolLM2. Four clients stream (bench/loadgen.py: ~150-token prompts, one
request of 384 tokens each per turn, `ignore_eos`: after the first token no client's own
prompt interrupts the others' decoding, so the inter-token gaps show what the attack does),
measured in turns: quietly, and while a fifth client, in a process of its own (building and
sending 30 MB must not slow the measuring clients' event loop), sends hostile prompts back to
back:
- `special-6MiB-chat`: the issue's repro, a chat whose one message is `<|im_start|>` x 524,288;
- `plain-30MB-completions`: a 30 MB plain prompt to /v1/completions (under the 32 MiB body
  limit, so it reaches the prompt checks);
- `under-bound-chat` / `under-bound-completions`: just under the character bound (ctx_per_seq x
  32 characters), so tokenized: `<|im_start|>` text in a chat, plain words as a prompt;
- `objects-14MB-chat`: 400,000 tiny messages, a body whose parsing and validation (2.5 s on the
  event loop) llmd/body.py now refuses by its count of values;
- `ids-under-bound-completions`: a prompt of token ids just under body.py's bound on values.
Turns alternate quiet / attack, `--repeats` of each. Reported: each hostile kind's statuses,
error codes and latency (p50, max); the clients' inter-token latency (ITL) p50/p99 in each turn
and attack / quiet (the issue's target: p99 within 2x); the peak RSS of the daemon and of the
model process per turn, and 2 s after it (is the memory given back?); whether the model process
survived (the same pid throughout).

    .venv/bin/python -m bench.attack [--repeats 2] [--requests 1] [--max-tokens 384] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Empty
from tempfile import TemporaryDirectory
from typing import Any

import psutil

from bench.daemon import MODELS, SMOL, Daemon, start_daemon
from bench.harness import omp_policy
from bench.loadgen import LoadConfig, make_text, run_load
from bench.loadstats import percentile
from bench.report import write_results

MODEL = "smollm2"
CTX = 2048
CHAR_BOUND = CTX * 32
"""llmd refuses a prompt longer than this before tokenizing it (MAX_CHARS_PER_TOKEN)."""
CLIENTS = 4
ATTACK_TIMEOUT_S = 120.0


def config(work: Path, threads: int, threads_batch: int) -> str:
    models = work / "models"
    models.mkdir(exist_ok=True)  # empty: the one model is the table below
    return (
        f'models_dir = "{models}"\n[server]\nmax_queue = 16\n'
        f"[engine]\nctx_per_seq = {CTX}\nparallel = 8\n"
        f"threads = {threads}\nthreads_batch = {threads_batch}\n"
        f'[models.{MODEL}]\npath = "{MODELS / SMOL}"\n'
    )


def hostile_bodies() -> list[tuple[str, str, bytes]]:
    """(kind, route, body): the hostile requests, encoded once."""

    def msg(content: str) -> dict[str, str]:
        return {"role": "user", "content": content}

    def chats(messages: list[dict[str, str]]) -> bytes:
        return json.dumps({"model": MODEL, "max_tokens": 1, "messages": messages}).encode()

    def chat(content: str) -> bytes:
        return chats([msg(content)])

    def completion(prompt: str | list[int]) -> bytes:
        return json.dumps({"model": MODEL, "max_tokens": 1, "prompt": prompt}).encode()

    def completion_ids(n: int) -> bytes:
        return completion([(i * 7919) % 40_000 + 100 for i in range(n)])

    marker = "<|im_start|>"
    # Room for the chat template's markup (and a default system prompt) under the bound.
    under_chat = marker * ((CHAR_BOUND - 512) // len(marker))
    words = make_text(CHAR_BOUND // 4, "under-bound")[: CHAR_BOUND - 64]
    text = make_text(2000, "plain") + " "
    plain = text * (30_000_000 // len(text) + 1)
    return [
        ("special-6MiB-chat", "/v1/chat/completions", chat(marker * 524_288)),
        ("plain-30MB-completions", "/v1/completions", completion(plain[:30_000_000])),
        ("under-bound-chat", "/v1/chat/completions", chat(under_chat)),
        ("under-bound-completions", "/v1/completions", completion(words)),
        ("objects-14MB-chat", "/v1/chat/completions", chats([msg("hi")] * 400_000)),
        ("ids-under-bound-completions", "/v1/completions", completion_ids(299_000)),
    ]


def send(url: str, body: bytes) -> tuple[int | None, str | None, str]:
    """(status, error code, message): one hostile request, answered or not."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=ATTACK_TIMEOUT_S) as resp:
            return resp.status, None, resp.read()[:200].decode(errors="replace")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            error = json.loads(raw)["error"]
            return exc.code, error.get("code"), str(error.get("message"))[:300]
        except (ValueError, KeyError, TypeError):
            return exc.code, None, raw[:200].decode(errors="replace")
    except OSError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"


KINDS = (
    "special-6MiB-chat",
    "plain-30MB-completions",
    "under-bound-chat",
    "under-bound-completions",
    "objects-14MB-chat",
    "ids-under-bound-completions",
)


def attacker(base: str, kinds: list[str], stop: Event, started: Event, out: Any) -> None:
    """The fifth client (its own process): the hostile bodies of `kinds` in turn until
    `stop`."""
    bodies = [b for b in hostile_bodies() if b[0] in kinds]
    started.set()
    i = 0
    while not stop.is_set():
        kind, route, body = bodies[i % len(bodies)]
        t = time.perf_counter()
        status, code, message = send(base + route, body)
        out.put(
            {
                "kind": kind,
                "bytes": len(body),
                "status": status,
                "code": code,
                "message": message,
                "seconds": time.perf_counter() - t,
            }
        )
        i += 1


class Peaks:
    """The peak RSS of the daemon and of the model process, sampled in a thread."""

    def __init__(self, daemon_pid: int, model_pid: int, interval: float = 0.2) -> None:
        self.procs = {"daemon": psutil.Process(daemon_pid), "model": psutil.Process(model_pid)}
        self.peak = dict.fromkeys(self.procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)
            except psutil.Error:
                pass

    def take(self) -> dict[str, int]:
        """The peaks since the last take, and start again."""
        self.sample()
        peak = dict(self.peak)
        self.peak = dict.fromkeys(self.procs, 0)
        return peak

    def now(self) -> dict[str, int]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = proc.memory_info().rss
            except psutil.Error:
                out[name] = 0
        return out

    def stop(self) -> None:
        self._stop.set()


def models(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.health()["models"]  # type: ignore[return-value]


def model_pid(daemon: Daemon) -> int:
    return int(next(m for m in models(daemon) if m["name"] == MODEL)["pid"])


def turn(
    daemon: Daemon, phase: str, rep: int, args: argparse.Namespace, peaks: Peaks
) -> dict[str, Any]:
    """One measured turn of the four clients, under attack or not."""
    cfg = LoadConfig(
        url=daemon.url + "/v1",
        model=MODEL,
        concurrency=CLIENTS,
        requests=CLIENTS * args.requests,
        max_tokens=args.max_tokens,
        ignore_eos=True,
        warmup=0,
        label=phase,
        seed_salt=f"{phase}-{rep}",
    )
    attacks: list[dict[str, Any]] = []
    peaks.take()
    if phase == "quiet":
        run = asyncio.run(run_load(cfg))
    else:
        ctx = multiprocessing.get_context("spawn")
        stop, started, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=attacker, args=(daemon.url, args.kinds, stop, started, out))
        proc.start()
        started.wait(60)
        run = asyncio.run(run_load(cfg))
        stop.set()
        while proc.is_alive() or not out.empty():
            try:
                attacks.append(out.get(timeout=1))
            except Empty:
                pass
        proc.join()
    peak = peaks.take()
    time.sleep(2)  # then what it keeps
    end = peaks.now()
    print(
        f"{phase} {rep + 1}: {run.ok} ok, {run.errors} errors, ITL p50 {run.itl_ms.p50:.1f} "
        f"p99 {run.itl_ms.p99:.1f} ms; {len(attacks)} hostile requests; peak RSS daemon "
        f"{peak['daemon'] / 1e6:.0f} MB (then {end['daemon'] / 1e6:.0f}), model "
        f"{peak['model'] / 1e6:.0f} MB (then {end['model'] / 1e6:.0f})",
        flush=True,
    )
    return {
        "phase": phase,
        "repeat": rep,
        "run": asdict(run),
        "peak_rss_bytes": peak,
        "end_rss_bytes": end,
        "attacks": attacks,
    }


def _itl(turns: list[dict[str, Any]], phase: str, p: str) -> list[float]:
    return [t["run"]["itl_ms"][p] for t in turns if t["phase"] == phase]


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """ITL per phase (median of the turns), attack / quiet, and each hostile kind's answers."""
    out: dict[str, Any] = {}
    for phase in ("quiet", "attack"):
        for p in ("p50", "p99"):
            out[f"{phase}.itl_{p}_ms"] = statistics.median(_itl(turns, phase, p))
        out[f"{phase}.client_errors"] = sum(
            t["run"]["errors"] for t in turns if t["phase"] == phase
        )
        for who in ("daemon", "model"):
            out[f"{phase}.peak_rss_{who}_mb"] = (
                max(t["peak_rss_bytes"][who] for t in turns if t["phase"] == phase) / 1e6
            )
            out[f"{phase}.end_rss_{who}_mb"] = [
                t["end_rss_bytes"][who] / 1e6 for t in turns if t["phase"] == phase
            ]
    for p in ("p50", "p99"):
        out[f"ratio.itl_{p}"] = out[f"attack.itl_{p}_ms"] / out[f"quiet.itl_{p}_ms"]
    # Each attack turn against the quiet turn before it.
    out["ratio.itl_p99.per_repeat"] = [
        a / q
        for q, a in zip(_itl(turns, "quiet", "p99"), _itl(turns, "attack", "p99"), strict=True)
    ]
    kinds: dict[str, Any] = {}
    for a in (a for t in turns for a in t["attacks"]):
        k = kinds.setdefault(a["kind"], {"seconds": [], "status": Counter(), "code": Counter()})
        k["seconds"].append(a["seconds"])
        k["status"][str(a["status"])] += 1
        k["code"][str(a["code"])] += 1
        k["bytes"] = a["bytes"]
        k["message"] = a["message"]
    out["attacks"] = {
        kind: {
            "n": len(k["seconds"]),
            "bytes": k["bytes"],
            "status": dict(k["status"]),
            "code": dict(k["code"]),
            "p50_s": percentile(k["seconds"], 50),
            "max_s": max(k["seconds"]),
            "message": k["message"],
        }
        for kind, k in kinds.items()
    }
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.attack", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="turns of each phase")
    p.add_argument("--requests", type=int, default=1, help="requests per client per turn")
    p.add_argument("--max-tokens", type=int, default=384, help="tokens per request")
    p.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=list(KINDS),
        help=f"hostile requests sent, comma-separated (default all: {','.join(KINDS)})",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--threads-batch", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if unknown := set(args.kinds) - set(KINDS):
        p.error(f"unknown --kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    args.model = MODELS / SMOL
    return args


def main() -> int:
    args = parse_args()
    omp_policy()
    load_start = os.getloadavg()
    with TemporaryDirectory(prefix="llmd-attack-") as tmp:
        daemon = start_daemon(Path(tmp), config(Path(tmp), args.threads, args.threads_batch))
        try:
            pid = model_pid(daemon)
            peaks = Peaks(daemon.proc.pid, pid)
            # Warm-up, unmeasured: the first requests of a fresh model process are slower.
            warm = LoadConfig(url=daemon.url + "/v1", model=MODEL, concurrency=CLIENTS,
                              requests=CLIENTS, max_tokens=16, warmup=0)  # fmt: skip
            asyncio.run(run_load(warm))
            turns = [
                turn(daemon, phase, rep, args, peaks)
                for rep in range(args.repeats)
                for phase in ("quiet", "attack")
            ]
            peaks.stop()
            same_pid = model_pid(daemon) == pid
            restarts = [m["restarts"] for m in models(daemon)]
        finally:
            daemon.stop()
    summary = summarize(turns)
    summary["model_process_survived"] = same_pid
    summary["restarts"] = restarts
    print(report(summary))
    write_results(
        args.json,
        "attack",
        args,
        load_average={"start": load_start, "end": os.getloadavg()},
        clients=CLIENTS,
        kinds=args.kinds,
        max_tokens=args.max_tokens,
        ctx_per_seq=CTX,
        char_bound=CHAR_BOUND,
        summary=summary,
        turns=turns,
    )
    return 0


def report(s: dict[str, Any]) -> str:
    lines = ["| hostile request | n | status | code | p50 s | max s |", "|---|---|---|---|---|---|"]
    for kind, a in s["attacks"].items():
        lines.append(
            f"| {kind} ({a['bytes'] / 2**20:.1f} MiB) | {a['n']} | {a['status']} | {a['code']} "
            f"| {a['p50_s']:.3f} | {a['max_s']:.3f} |"
        )
    lines += ["", "| clients' ITL | quiet | attack | attack / quiet |", "|---|---|---|---|"]
    for p in ("p50", "p99"):
        lines.append(
            f"| {p} ms | {s[f'quiet.itl_{p}_ms']:.1f} | {s[f'attack.itl_{p}_ms']:.1f} | "
            f"{s[f'ratio.itl_{p}']:.2f}x |"
        )
    ratios = ", ".join(f"{r:.2f}x" for r in s["ratio.itl_p99.per_repeat"])
    rss = {
        who: f"{s[f'quiet.peak_rss_{who}_mb']:.0f} / {s[f'attack.peak_rss_{who}_mb']:.0f} MB"
        for who in ("daemon", "model")
    }
    lines.append(
        f"\np99 attack / quiet per repeat: {ratios}; client errors quiet "
        f"{s['quiet.client_errors']}, attack {s['attack.client_errors']}; peak RSS (quiet / "
        f"attack) daemon {rss['daemon']}, model {rss['model']}; model process survived: "
        f"{s['model_process_survived']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
