"""What exporting a large usage table costs the daemon (issue 19, docs/benchmarks.md "Usage
listings"): its peak memory, and how long `/health` waits meanwhile.

    .venv/bin/python -m bench.usage_listing [--rows 1000000] [--base /old/checkout]
        [--json bench/results/usage-listing-DATE.json]

One database of `--rows` usage records (made once, ~30 days of 20 keys and 3 models), then for
each checkout (`--base`, the "before", when given; this one, the "after"): a fresh daemon with
no models on that file, and `GET /api/v1/usage?format=csv&limit=-1`, which asks every record
of both versions (before: an unbounded list built in memory; after: `limit=-1` is a 400, so
the after run leaves `limit` out and gets the streamed export). Meanwhile `/health` is asked
every 100 ms and the daemon's RSS read every 20 ms from /proc. The after run also times a page
from the newest end and one from the oldest end (keyset pages cost the same anywhere).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import Daemon, start_daemon  # noqa: E402
from llmd.usage.store import USAGE_COLUMNS, connect  # noqa: E402


def make_database(path: Path, rows: int) -> None:
    """`rows` records over 30 days, written in one transaction, as the writer would have."""
    rng = random.Random(19)
    start = time.time() - 30 * 86400
    step = 30 * 86400 / rows
    conn = connect(path)
    insert = (
        f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"
    )
    conn.execute("BEGIN")
    batch = []
    for n in range(rows):
        prompt, completion = rng.randint(5, 2000), rng.randint(1, 500)
        latency = rng.uniform(50, 5000)
        batch.append(
            (
                start + n * step,
                f"req-{rng.getrandbits(96):024x}",
                f"key-{rng.randrange(20)}",
                ("smollm2", "gemma3-270m", "qwen2.5-0.5b")[rng.randrange(3)],
                "/v1/chat/completions",
                200 if rng.random() > 0.02 else 429,
                None,
                rng.randrange(2),
                prompt,
                rng.randrange(prompt),
                completion,
                round(latency / 10, 3),
                round(latency, 3),
                "10.0.0.7",
            )
        )
        if len(batch) == 10_000:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)
    conn.execute("COMMIT")
    conn.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def revision(checkout: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


def timed_get(url: str, timeout: float = 120) -> tuple[int, int, float]:
    """(status, body bytes, seconds) of a GET whose body is read and dropped as it comes."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, size = resp.status, 0
            while chunk := resp.read(1 << 16):
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        status, size = exc.code, len(exc.read())
    return status, size, time.monotonic() - began


def export_run(
    label: str, checkout: Path, db: Path, work: Path, name: str | None = None
) -> dict[str, Any]:
    config = f'models_dir = "{work / "models"}"\n[usage]\ndatabase = "{db}"\n'
    (work / "models").mkdir(parents=True, exist_ok=True)
    daemon: Daemon = start_daemon(work, config, ready="/health", checkout=checkout)
    pid = daemon.proc.pid
    try:
        time.sleep(1.0)
        idle_rss = rss_mib(pid)
        done = threading.Event()
        rss: list[float] = []
        health: list[float] = []

        def sample_rss() -> None:
            while not done.is_set():
                rss.append(rss_mib(pid))
                time.sleep(0.02)

        def ask_health() -> None:
            while not done.is_set():
                status, _, seconds = timed_get(daemon.url + "/health")
                assert status == 200, status
                health.append(seconds * 1000)
                time.sleep(0.1)

        threads = [threading.Thread(target=f) for f in (sample_rss, ask_health)]
        for t in threads:
            t.start()
        query = "format=csv&limit=-1" if label == "before" else "format=csv"
        status, size, seconds = timed_get(daemon.url + "/api/v1/usage?" + query, timeout=600)
        done.set()
        for t in threads:
            t.join()
        result: dict[str, Any] = {
            "revision": name or revision(checkout),
            "query": query,
            "status": status,
            "bytes": size,
            "export_s": round(seconds, 2),
            "rss_idle_mib": round(idle_rss, 1),
            "rss_peak_mib": round(max(rss), 1),
            "health_requests": len(health),
            "health_max_ms": round(max(health), 1),
            "health_p50_ms": round(statistics.median(health), 2),
        }
        if label == "after":
            result["unbounded_json"] = timed_get(daemon.url + "/api/v1/usage?limit=-1")[0]
            newest = timed_get(daemon.url + "/api/v1/usage?limit=1000")
            oldest = timed_get(daemon.url + "/api/v1/usage?limit=1000&after=1001")
            result["page_newest_ms"] = round(newest[2] * 1000, 1)
            result["page_oldest_ms"] = round(oldest[2] * 1000, 1)
        return result
    finally:
        daemon.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--base", type=Path, help="the 'before' checkout (llmd of another tree)")
    p.add_argument("--base-revision", help="what --base is, when it is no git checkout")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    out: dict[str, Any] = {"rows": args.rows, "load_average_at_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="usage-listing-") as tmp:
        db = Path(tmp) / "usage.db"
        began = time.monotonic()
        make_database(db, args.rows)
        out["database_mib"] = round(db.stat().st_size / 2**20, 1)
        print(f"{args.rows} records, {out['database_mib']} MiB, {time.monotonic() - began:.0f} s")
        runs = [("before", args.base)] if args.base else []
        for label, checkout in [*runs, ("after", ROOT)]:
            assert checkout is not None
            name = args.base_revision if label == "before" else None
            out[label] = export_run(label, checkout, db, Path(tmp) / label, name)
            print(label, json.dumps(out[label]))
    out["load_average_at_end"] = load_average()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
