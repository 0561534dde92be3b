"""What the Responses and Messages translations cost against chat completions
(docs/benchmarks.md, "APIs").

    .venv/bin/python bench/apis.py                        # 3 rounds, 16 clients, 64 tokens
    .venv/bin/python bench/apis.py --repeats 4 --json bench/results/apis-DATE.json

One daemon, one model (SmolLM2), greedy. Each round sends the same requests through each API in
turn (the order rotates each round): 16 concurrent streams, 2 requests each, the same system
prompt and a user message that differs per request and per round (so no API finds another's
answer in the prefix cache beyond the shared system prompt). Every API reads the same SSE stream
shape it would in use: chat completions' chunks, the Responses API's typed events, the Messages
API's named events. Per run: aggregate output tokens/s (output tokens from each API's own usage
over the run's wall time), TTFT p50 (first text delta), the tokens per request, and the CPU time
the daemon process itself spent per request, and its model process's: what a translation costs
is in the daemon's, measured apart from the model's work, which is the same for every API. The
results are the ratios of each API's medians to chat completions'.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import bench.* and llmd.* from the checkout
    sys.path.insert(0, str(ROOT))

from bench.daemon import MODELS, SMOL, Daemon, start_daemon  # noqa: E402
from bench.harness import omp_policy  # noqa: E402

APIS = ("chat", "responses", "messages")
SYSTEM = "You are a storyteller. Answer every request with a long, detailed story."
TOPICS = ("a dragon", "a lighthouse", "a clockmaker", "a river", "a robot", "a baker", "a fox")


@dataclass
class Result:
    ttft_s: float
    output_tokens: int


def _user(round_: int, index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return f"Story {round_}-{index}: tell me a long story about {topic} number {index}."


def _body(api: str, user: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The path and body of one streamed, greedy request in `api`'s own shape."""
    if api == "chat":
        return "/v1/chat/completions", {
            "model": "smollm2",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    if api == "responses":
        return "/v1/responses", {
            "model": "smollm2",
            "instructions": SYSTEM,
            "input": user,
            "max_output_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "store": False,
        }
    return "/v1/messages", {
        "model": "smollm2",
        "system": SYSTEM,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Each `data:` line's JSON (OpenAI's `[DONE]` skipped)."""
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            yield json.loads(line[5:])


def _text_and_tokens(api: str, event: dict[str, Any]) -> tuple[bool, int | None]:
    """Whether the event carries answer text; the output tokens it reports, if any."""
    if api == "chat":
        choices = event.get("choices") or []
        text = bool(choices and choices[0].get("delta", {}).get("content"))
        usage = event.get("usage")
        return text, usage["completion_tokens"] if usage else None
    kind = event.get("type")
    if api == "responses":
        if kind in ("response.completed", "response.incomplete"):
            return False, event["response"]["usage"]["output_tokens"]
        return kind == "response.output_text.delta" and bool(event.get("delta")), None
    if kind == "message_delta":
        return False, event["usage"]["output_tokens"]
    delta = event.get("delta", {})
    return kind == "content_block_delta" and bool(delta.get("text")), None


async def _one(
    session: aiohttp.ClientSession, url: str, api: str, user: str, tokens: int
) -> Result:
    path, body = _body(api, user, tokens)
    t0 = time.perf_counter()
    ttft: float | None = None
    output: int | None = None
    async with session.post(url + path, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{api}: {resp.status} {await resp.text()}")
        async for event in _events(resp):
            text, reported = _text_and_tokens(api, event)
            if text and ttft is None:
                ttft = time.perf_counter() - t0
            if reported is not None:
                output = reported
    if ttft is None or output is None:
        raise RuntimeError(f"{api}: a stream without text or usage")
    return Result(ttft, output)


def _daemon_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the daemon process alone, not its model processes."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _model_cpu(pid: int) -> float:
    """CPU seconds of the daemon's model processes (its children, running)."""
    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _run(
    url: str, pid: int, api: str, round_: int, clients: int, per_client: int, tokens: int
) -> dict[str, Any]:
    results: list[Result] = []
    cpu0, model0 = _daemon_cpu(pid), _model_cpu(pid)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(c: int) -> None:
            for r in range(per_client):
                results.append(
                    await _one(session, url, api, _user(round_, c * per_client + r), tokens)
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    cpu, model_cpu = _daemon_cpu(pid) - cpu0, _model_cpu(pid) - model0
    out = sum(r.output_tokens for r in results)
    return {
        "tok_s": round(out / wall, 1),
        "daemon_cpu_ms_per_request": round(cpu / len(results) * 1000, 2),
        "model_cpu_ms_per_request": round(model_cpu / len(results) * 1000, 1),
        "ttft_p50_ms": round(statistics.median(r.ttft_s for r in results) * 1000, 1),
        "tokens_per_request": round(out / len(results), 1),
    }


async def compare(
    daemon: Daemon, repeats: int, clients: int, per_client: int, tokens: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {api: [] for api in APIS}
    # One warm-up request per API: the first request on a model pays for its load.
    for api in APIS:
        await _run(daemon.url, daemon.proc.pid, api, -1, 1, 1, 8)
    for i in range(repeats):
        order = APIS[i % 3 :] + APIS[: i % 3]
        for api in order:
            run = await _run(daemon.url, daemon.proc.pid, api, i, clients, per_client, tokens)
            runs[api].append(run)
            print(f"  round {i} {api}: {run}", flush=True)
    median: Callable[[str, str], float] = lambda api, f: statistics.median(r[f] for r in runs[api])  # noqa: E731
    out: dict[str, Any] = {
        "clients": clients,
        "requests_per_run": clients * per_client,
        "max_tokens": tokens,
        "runs": runs,
        "median_tok_s": {api: median(api, "tok_s") for api in APIS},
        "median_ttft_p50_ms": {api: median(api, "ttft_p50_ms") for api in APIS},
        "median_daemon_cpu_ms_per_request": {
            api: median(api, "daemon_cpu_ms_per_request") for api in APIS
        },
        "median_model_cpu_ms_per_request": {
            api: median(api, "model_cpu_ms_per_request") for api in APIS
        },
    }
    for api in APIS[1:]:
        out[f"{api}_over_chat"] = {
            "tok_s": round(median(api, "tok_s") / median("chat", "tok_s"), 3),
            "ttft_p50": round(median(api, "ttft_p50_ms") / median("chat", "ttft_p50_ms"), 3),
            "daemon_cpu": round(
                median(api, "daemon_cpu_ms_per_request")
                / median("chat", "daemon_cpu_ms_per_request"),
                3,
            ),
            # What the translation adds to all the CPU a request costs (daemon and model).
            "added_share_of_request_cpu": round(
                (
                    median(api, "daemon_cpu_ms_per_request")
                    - median("chat", "daemon_cpu_ms_per_request")
                )
                / (
                    median("chat", "daemon_cpu_ms_per_request")
                    + median("chat", "model_cpu_ms_per_request")
                ),
                5,
            ),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every API once")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    omp_policy()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        models_dir = tmp / "models"  # empty: the one model is the config's table
        models_dir.mkdir()
        config = (
            f'models_dir = "{models_dir}"\n[server]\nmax_queue = 64\n'
            f"[engine]\nctx_per_seq = 512\nparallel = 16\n"
            f'[models.smollm2]\npath = "{MODELS / SMOL}"\n'
        )
        daemon = start_daemon(tmp, config, "/ready", 180)
        try:
            results["apis"] = asyncio.run(
                compare(daemon, args.repeats, args.clients, args.per_client, args.max_tokens)
            )
        finally:
            daemon.stop()
    results["load_at_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in results["apis"].items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
