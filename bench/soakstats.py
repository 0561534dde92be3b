"""What a soak run (bench/soak.py) watches and concludes: the processes sampled in a thread,
what every request came to, and the usage records set against what the clients saw.

- `Sampler`: every few seconds, the RSS, open files and threads of the daemon and of each of
  its child processes (the model processes), and how long `/health` took to answer;
- `flatness`: the first-quarter and last-quarter medians of each sampled series;
- `Outcome` and `outcomes_summary`: one request as its client saw it, and the counts;
- `reconcile`: the usage rows against the requests the clients got an answer to, per key.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil

RESULTS = ("ok", "cancelled", "refused", "failed_clean", "unclean", "hang")
"""ok: complete; cancelled: closed early by its client on purpose; refused: 429 or 503 in the
error shape; failed_clean: another error status, or an error event ending a stream, in the
error shape; unclean: anything else (no status, a body not in the error shape, a stream cut
without its end); hang: no answer within the client's timeout."""
ACCEPTED_BAD = ("unclean", "hang")


@dataclass
class Outcome:
    """One request as its client saw it."""

    request_id: str
    key: str
    kind: str
    at_s: float
    """When it was sent, seconds from the start of the run."""
    seconds: float = 0.0
    status: int | None = None
    result: str = "unclean"
    code: str | None = None
    detail: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    """From the answer's usage, when it had one."""


def _proc_sample(proc: psutil.Process) -> dict[str, Any] | None:
    try:
        with proc.oneshot():
            return {
                "pid": proc.pid,
                "rss": proc.memory_info().rss,
                "fds": proc.num_fds(),
                "threads": proc.num_threads(),
                "status": proc.status(),
            }
    except psutil.Error:
        return None


class Sampler:
    """Samples the daemon and its children every `interval` seconds in a thread of its own (so
    that a busy event loop in the clients cannot delay it)."""

    def __init__(self, daemon_pid: int, url: str, secret: str, interval: float) -> None:
        self.daemon = psutil.Process(daemon_pid)
        self.health = urllib.request.Request(
            url + "/api/v1/health", headers={"Authorization": f"Bearer {secret}"}
        )
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        start = time.perf_counter()
        health_ms: float | None = None
        current: list[int] = []
        try:
            with urllib.request.urlopen(self.health, timeout=30) as resp:
                health = json.loads(resp.read())
            health_ms = (time.perf_counter() - start) * 1000
            current = [m["pid"] for m in health["models"] if m.get("pid")]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        daemon = _proc_sample(self.daemon)
        try:
            children = self.daemon.children(recursive=True)
        except psutil.Error:
            children = []
        models = [s for c in children if (s := _proc_sample(c)) is not None]
        self.samples.append(
            {"t": t, "health_ms": health_ms, "current": current, "daemon": daemon, "models": models}
        )

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(t, value) per measure: the daemon's rss/fds/threads; those of the model processes
    serving (`current`, as /api/v1/health names them); those of all its children summed
    (`models`: the serving ones, a spare started ahead for the next restart, versions
    draining after a swap), their count and the zombies among them; /api/v1/health's
    latency."""
    out: dict[str, list[tuple[float, float]]] = {}

    def add(name: str, t: float, value: float) -> None:
        out.setdefault(name, []).append((t, value))

    for s in samples:
        t = s["t"]
        if s["daemon"] is not None:
            for k in ("rss", "fds", "threads"):
                add(f"daemon.{k}", t, s["daemon"][k])
        live = [m for m in s["models"] if m["status"] != psutil.STATUS_ZOMBIE]
        for k in ("rss", "fds", "threads"):
            add(f"models.{k}", t, sum(m[k] for m in live))
        add("models.count", t, len(live))
        serving = [m for m in live if m["pid"] in s.get("current", [])]
        if serving:
            for k in ("rss", "fds", "threads"):
                add(f"current.{k}", t, sum(m[k] for m in serving))
        add("models.zombies", t, len(s["models"]) - len(live))
        if s["health_ms"] is not None:
            add("health_ms", t, s["health_ms"])
    return out


def flatness(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per measure: the medians of the first and the last quarter of the run, their ratio, and
    the minimum and maximum over the whole run."""
    if not samples:
        return {}
    end = samples[-1]["t"]
    out: dict[str, dict[str, float]] = {}
    for name, points in series(samples).items():
        first = [v for t, v in points if t <= end / 4]
        last = [v for t, v in points if t >= end * 3 / 4]
        if not first or not last:
            continue
        q1, q4 = statistics.median(first), statistics.median(last)
        values = [v for _, v in points]
        out[name] = {
            "q1_median": q1,
            "q4_median": q4,
            "q4_over_q1": q4 / q1 if q1 else float("nan"),
            "min": min(values),
            "max": max(values),
        }
    return out


def per_process(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model process seen: when, and its RSS and open files over its life."""
    seen: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    for s in samples:
        for m in s["models"]:
            seen.setdefault(m["pid"], []).append((s["t"], m))
    out = []
    for pid, points in seen.items():
        rss = [m["rss"] for _, m in points]
        fds = [m["fds"] for _, m in points]
        out.append(
            {
                "pid": pid,
                "first_s": points[0][0],
                "last_s": points[-1][0],
                "samples": len(points),
                "rss_mb_min_median_max": [
                    min(rss) / 1e6,
                    statistics.median(rss) / 1e6,
                    max(rss) / 1e6,
                ],  # fmt: skip
                "fds_min_max": [min(fds), max(fds)],
                "last_status": points[-1][1]["status"],
            }
        )
    return out


@dataclass
class Reconciliation:
    """The usage rows of the run's requests against what their clients saw."""

    per_key: dict[str, dict[str, int]] = field(default_factory=dict)
    """key: answered (the client got a status), rows (all of the key's rows of the run's
    requests), rows_of_answered, equal (1 when all three agree)."""
    missing: list[str] = field(default_factory=list)
    """Answered requests without a row."""
    extra: list[str] = field(default_factory=list)
    """Rows of requests whose client got no status (a hang, a cut connection)."""
    duplicates: list[str] = field(default_factory=list)
    status_differs: dict[str, int] = field(default_factory=dict)
    """"client status -> row status (result)": how many, where the two differ."""
    token_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """Completed requests whose row's tokens differ from the usage in their answer."""
    tokens_checked: int = 0


def reconcile(outcomes: list[Outcome], rows: list[dict[str, Any]]) -> Reconciliation:
    """`rows`: the usage rows whose request id is one of the run's (request_id, key, status,
    prompt_tokens, completion_tokens)."""
    rec = Reconciliation()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["request_id"], []).append(row)
    rec.duplicates = sorted(rid for rid, rs in by_id.items() if len(rs) > 1)
    answered = [o for o in outcomes if o.status is not None]
    answered_ids = {o.request_id for o in answered}
    for key in sorted({o.key for o in outcomes} | {r["key"] for r in rows if r["key"]}):
        n_answered = sum(1 for o in answered if o.key == key)
        n_rows = sum(1 for r in rows if r["key"] == key and r["request_id"] in answered_ids)
        n_all = sum(1 for r in rows if r["key"] == key)
        rec.per_key[key] = {
            "answered": n_answered,
            "rows": n_all,
            "rows_of_answered": n_rows,
            "equal": int(n_answered == n_rows == n_all),
        }
    rec.missing = sorted(o.request_id for o in answered if o.request_id not in by_id)
    rec.extra = sorted(rid for rid in by_id if rid not in answered_ids)
    differs: Counter[str] = Counter()
    for o in answered:
        row_list = by_id.get(o.request_id)
        if not row_list:
            continue
        row = row_list[0]
        if row["status"] != o.status:
            differs[f"{o.status} -> {row['status']} ({o.result})"] += 1
        if o.result == "ok" and o.prompt_tokens is not None:
            rec.tokens_checked += 1
            got = (row["prompt_tokens"], row["completion_tokens"])
            want = (o.prompt_tokens, o.completion_tokens or 0)
            if got != want:
                rec.token_mismatches.append(
                    {"request_id": o.request_id, "client": want, "row": got}
                )
    rec.status_differs = dict(differs)
    return rec


def outcomes_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by result and by kind, the statuses and error codes seen, and every request
    that was not completed or cleanly failed (unclean or hung), with what it got."""
    by_kind: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.result] += 1
    bad = [o for o in outcomes if o.result in ACCEPTED_BAD]
    return {
        "requests": len(outcomes),
        "by_result": dict(Counter(o.result for o in outcomes)),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "statuses": dict(Counter(str(o.status) for o in outcomes)),
        "error_codes": dict(Counter(o.code for o in outcomes if o.code)),
        "not_clean": [
            {
                "request_id": o.request_id,
                "kind": o.kind,
                "at_s": round(o.at_s, 1),
                "seconds": round(o.seconds, 2),
                "status": o.status,
                "result": o.result,
                "detail": o.detail,
            }  # fmt: skip
            for o in bad
        ],
        "seconds_max": max((o.seconds for o in outcomes), default=0.0),
    }


def log_errors(log: str) -> dict[str, int]:
    """The daemon log's ERROR lines (their time cut off) and the exception ending each
    traceback, counted: what went wrong, and how often."""
    counts: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " in line:
            counts[line.split(" ", 1)[-1]] += 1
        elif line.startswith("Traceback"):
            end = next(
                (x for x in lines[i + 1 :] if x and not x.startswith((" ", "Traceback"))), "?"
            )
            counts[f"traceback: {end[:200]}"] += 1
    return dict(counts)
