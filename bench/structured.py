"""Structured output side by side: llmd against llama-server, both holding chat answers to the
same JSON schema (`response_format` json_schema), and both writing freely, on the same model
file, threads and OpenMP policy (docs/benchmarks.md, "Structured output").

Each turn runs, on a server started for it: 16 clients at once, greedy, then 16 sampled at
temperature 1 (seeds 0-15); each once with the schema and once without. Reported per server:
output tokens/s, inter-token latency (ITL) p50, how many of the 16 answers ran to max_tokens
(all of them: free answers ignore the end of generation, and the schema's ten cities cannot
close in 64 tokens, so held and free do the same work at the same concurrency); and the cost
of the grammar, held / free ITL p50, the figure to compare between servers. That held answers
are valid JSON of the schema is the tests' business (tests/e2e/test_structured.py). 3 repeats by
default, the first place alternating.

    .venv/bin/python -m bench.structured [--model PATH] [--repeats N] [--json OUT]

Needs llama-server from `scripts/bench` (~/.cache/llmd-bench/llama.cpp-0.3.36/bin).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import openai

from bench.harness import PEERS, Server, parse_peer_args, peer_turns
from bench.report import spread, write_results

CLIENTS = 16
# Every answer, held or free, runs to max_tokens (the count is reported): the same tokens at
# the same concurrency, so the two differ only by the grammar's work.
MAX_TOKENS = 64
ASK = "List ten big cities of the world as JSON, each with its country and population."
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "minItems": 10,  # cannot close within MAX_TOKENS
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 40},
                    "country": {"type": "string", "maxLength": 40},
                    "population": {"type": "integer"},
                },
                "required": ["name", "country", "population"],
            },
        }
    },
    "required": ["cities"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "cities", "schema": SCHEMA}}


async def _one(
    client: openai.AsyncOpenAI, seed: int, temperature: float, held: bool
) -> tuple[int, list[float], bool]:
    # Free answers ignore the end of generation, held ones cannot close: both run to the end.
    extra: dict[str, Any] = {"response_format": FORMAT} if held else {"ignore_eos": True}
    stream = await client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": f"{ASK} (request {seed})"}],
        temperature=temperature,
        seed=seed,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    times: list[float] = []
    text, tokens, finish = "", 0, None
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                times.append(time.perf_counter())
                text += choice.delta.content
            finish = choice.finish_reason or finish
    return tokens, [b - a for a, b in zip(times, times[1:], strict=False)], finish == "length"


def _turn(rep: int, server: Server) -> dict[str, float]:
    async def go() -> dict[str, float]:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        out: dict[str, float] = {}
        try:
            await _one(client, 99, 0.0, True)  # warm up, the grammar path included
            for temperature, name in ((0.0, "greedy"), (1.0, "sampled")):
                for held in (False, True):
                    t = time.perf_counter()
                    runs = await asyncio.gather(
                        *(_one(client, i, temperature, held) for i in range(CLIENTS))
                    )
                    wall = time.perf_counter() - t
                    key = f"{name}.{'held' if held else 'free'}"
                    out[f"{key}.tok_s"] = sum(r[0] for r in runs) / wall
                    out[f"{key}.itl_p50_ms"] = (
                        statistics.median(g for r in runs for g in r[1]) * 1e3
                    )
                    out[f"{key}.length_finishes"] = sum(r[2] for r in runs)
                held_itl = out[f"{name}.held.itl_p50_ms"]
                out[f"{name}.grammar_cost"] = held_itl / out[f"{name}.free.itl_p50_ms"]
        finally:
            await client.close()
        return out

    return asyncio.run(go())


def main() -> int:
    args = parse_peer_args("bench.structured", __doc__)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in PEERS}
    for rep, label, result in peer_turns(args, _turn, parallel=CLIENTS):
        runs[label].append(result)
        print(f"repeat {rep + 1}: {label}", flush=True)
        for key, value in result.items():
            print(f"  {key:28s} {value:8.2f}")
    summary = spread(runs)
    for name in ("greedy", "sampled"):
        for kind in ("free", "held"):
            key = f"{name}.{kind}.tok_s"
            ratio = summary[f"llmd.{key}"]["median"] / summary[f"llama-server.{key}"]["median"]
            summary[f"ratio.{key}"] = ratio
            print(f"{key}: llmd / llama-server = {ratio:.2f}x")
        for label in PEERS:
            cost = summary[f"{label}.{name}.grammar_cost"]["median"]
            print(f"{name}: {label} grammar cost (held / free ITL p50) = {cost:.2f}")
    write_results(
        args.json,
        "structured",
        args,
        clients=CLIENTS,
        max_tokens=MAX_TOKENS,
        schema=SCHEMA,
        summary=summary,
        runs=runs,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
