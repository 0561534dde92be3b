"""The watched-directory benchmark (issue 4 targets, docs/benchmarks.md):

- estimated versus measured memory per model (within 10%);
- first token from a model not yet loaded (SmolLM2), against the same request once loaded;
- a new file servable after its copy completes (renamed into the watched directory);
- failed requests during a hot swap under 8 concurrent streaming clients (zero).

It starts the real daemon on a temporary models directory holding copies of the models.

    .venv/bin/python -m bench.models [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.daemon import GEMMA, MODELS, SMOL, Daemon, start_daemon


def watching(work: Path, models_dir: Path, files: list[str], config: str) -> Daemon:
    """A daemon in WORK watching MODELS_DIR, made to hold copies of the models `files`."""
    models_dir.mkdir()
    for file in files:
        copy_in(MODELS / file, models_dir / file)
    return start_daemon(work, f'models_dir = "{models_dir}"\n{config}', "/api/v1/models", 60)


def post(d: Daemon, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        d.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def model_card(d: Daemon, name: str) -> dict[str, Any]:
    got = {m["name"]: m for m in d.get_json("/api/v1/models", 30)["models"]}
    return got[name]  # type: ignore[no-any-return]


def served(d: Daemon) -> list[str]:
    return [m["id"] for m in d.get_json("/v1/models", 30)["data"]]


def stream_ttft(url: str, model: str, max_tokens: int = 8) -> tuple[int, float, float]:
    """(status, seconds to the first content chunk, seconds to the end) of a streamed chat."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens,
            "stream": True,
        }
    )
    started = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = None
    text = b""
    while line := resp.readline():
        text += line
        if first is None and b'"content"' in line and b'"content": ""' not in line:
            first = time.monotonic() - started
    total = time.monotonic() - started
    conn.close()
    ok = resp.status == 200 and b"[DONE]" in text and b'"error"' not in text
    return (resp.status if ok else 599), (first if first is not None else total), total


def copy_in(src: Path, dst: Path) -> None:
    tmp = dst.with_name("." + dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def wait_for(predicate: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError("timed out")


def bench_memory(work: Path) -> list[dict[str, Any]]:
    rows = []
    for name, file, ctx, parallel in (
        ("smol 1024x16", SMOL, 1024, 16),
        ("smol 2048x4", SMOL, 2048, 4),
        ("smol 512x2", SMOL, 512, 2),
        ("gemma 1024x2", GEMMA, 1024, 2),
        ("gemma 2048x8", GEMMA, 2048, 8),
    ):
        sub = Path(tempfile.mkdtemp(dir=work))
        config = f"[engine]\nctx_per_seq = {ctx}\nparallel = {parallel}\n"
        d = watching(sub, sub / "models", [file], config)
        try:
            model = file.removesuffix(".gguf")
            wait_for(lambda m=model, daemon=d: m in served(daemon))
            for _ in range(2):
                status, _, _ = stream_ttft(d.url, model, 16)
                assert status == 200
            time.sleep(1.5)  # the manager samples the process's memory every second
            mem = model_card(d, model)["memory"]
            est, measured = mem["estimated_bytes"], mem["measured_bytes"]
            rows.append(
                {
                    "model": name,
                    "estimated_mib": round(est / 2**20),
                    "measured_mib": round(measured / 2**20),
                    "error_pct": round(100 * (est - measured) / measured, 1),
                }
            )
        finally:
            d.stop()
    return rows


def bench_cold_start(work: Path, repeats: int) -> dict[str, Any]:
    d = watching(work, work / "cold", [SMOL], "[engine]\nctx_per_seq = 2048\nparallel = 4\n")
    model = SMOL.removesuffix(".gguf")
    cold, warm = [], []
    try:
        wait_for(lambda: model in served(d))
        for _ in range(repeats):
            assert model_card(d, model)["state"] == "unloaded"
            status, first, _ = stream_ttft(d.url, model)
            assert status == 200
            cold.append(first)
            status, first, _ = stream_ttft(d.url, model)
            assert status == 200
            warm.append(first)
            post(d, f"/api/v1/models/{model}/unload", {})
    finally:
        d.stop()
    return {
        "cold_ttft_s": [round(x, 3) for x in cold],
        "warm_ttft_s": [round(x, 3) for x in warm],
        "cold_ttft_median_s": round(statistics.median(cold), 3),
        "warm_ttft_median_s": round(statistics.median(warm), 3),
    }


def bench_new_file(work: Path, repeats: int) -> dict[str, Any]:
    models_dir = work / "newfile"
    d = watching(work, models_dir, [], "")
    delays = []
    try:
        for i in range(repeats):
            name = f"m{i}"
            copy_in(MODELS / SMOL, models_dir / f"{name}.gguf")
            done = time.monotonic()
            wait_for(lambda n=name: n in served(d), 30)
            delays.append(time.monotonic() - done)
    finally:
        d.stop()
    return {
        "servable_after_s": [round(x, 3) for x in delays],
        "median_s": round(statistics.median(delays), 3),
        "max_s": round(max(delays), 3),
    }


def bench_hot_swap(work: Path, swaps: int) -> dict[str, Any]:
    models_dir = work / "swap"
    d = watching(work, models_dir, [SMOL], "[engine]\nctx_per_seq = 512\nparallel = 8\n")
    model = SMOL.removesuffix(".gguf")
    stop = threading.Event()
    results: list[int] = []

    def client() -> None:
        while not stop.is_set():
            status, _, _ = stream_ttft(d.url, model, 16)
            results.append(status)

    try:
        wait_for(lambda: model in served(d))
        stream_ttft(d.url, model)
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        durations = []
        for _ in range(swaps):
            pid = model_card(d, model)["pid"]
            copy_in(MODELS / SMOL, models_dir / SMOL)
            started = time.monotonic()
            wait_for(lambda p=pid: model_card(d, model)["pid"] not in (None, p), 60)
            durations.append(time.monotonic() - started)
            time.sleep(2)
        stop.set()
        for t in threads:
            t.join(120)
    finally:
        d.stop()
    return {
        "swaps": swaps,
        "requests": len(results),
        "failed": sum(1 for s in results if s != 200),
        "swap_s": [round(x, 2) for x in durations],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = {
            "date": time.strftime("%Y-%m-%d"),
            "memory": bench_memory(work),
            "cold_start": bench_cold_start(work, args.repeats),
            "new_file": bench_new_file(work, args.repeats),
            "hot_swap": bench_hot_swap(work, 3),
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
