"""Embeddings side by side: llmd against `llama-server --embeddings --pooling mean` on the same
model file, threads and OpenMP policy (docs/benchmarks.md, "Embeddings").

- `batch`: one request of 64 inputs of ~120 tokens (indexing documents for search);
- `clients`: 8 clients at once, each sending 8 one-input requests of ~120 tokens;
- agreement: the cosine between the two servers' vectors for each input of the batch;
- the peak RSS of each server's processes during its turn.

Contenders take turns, each on a server started for its turn, the first place alternating;
3 repeats by default, median and spread of input tokens per second and peak RSS.

    .venv/bin/python -m bench.embed [--model PATH] [--repeats N] [--json OUT]

Needs llama-server from `scripts/bench` (~/.cache/llmd-bench/llama.cpp-0.3.36/bin).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import openai

from bench.harness import PEERS, Server, parse_peer_args, peer_turns
from bench.loadgen import make_text
from bench.report import spread, write_results

INPUT_WORDS = 90  # ~120 tokens
# llama-server computes embeddings only when started for them.
LLAMA_SERVER_FLAGS = ("--embeddings", "--pooling", "mean")


async def _batch(client: openai.AsyncOpenAI, texts: list[str]) -> tuple[int, list[list[float]]]:
    r = await client.embeddings.create(model="bench", input=texts, encoding_format="float")
    return r.usage.prompt_tokens, [d.embedding for d in sorted(r.data, key=lambda d: d.index)]


async def _clients(client: openai.AsyncOpenAI, texts: list[str], n: int) -> int:
    async def one(i: int) -> int:
        tokens = 0
        for text in texts[i::n]:
            r = await client.embeddings.create(model="bench", input=text)
            tokens += r.usage.prompt_tokens
        return tokens

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


def _turn(rep: int, server: Server) -> tuple[dict[str, float], list[list[float]]]:
    salt = f"r{rep}"  # the same inputs for both servers
    batch_texts = [make_text(INPUT_WORDS, f"{salt}/batch/{i}") for i in range(64)]
    client_texts = [make_text(INPUT_WORDS, f"{salt}/clients/{i}") for i in range(64)]

    async def go() -> tuple[dict[str, float], list[list[float]]]:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        try:
            await client.embeddings.create(model="bench", input="warm up")
            t = time.perf_counter()
            tokens, vectors = await _batch(client, batch_texts)
            batch_s = time.perf_counter() - t
            t = time.perf_counter()
            client_tokens = await _clients(client, client_texts, 8)
            clients_s = time.perf_counter() - t
        finally:
            await client.close()
        rates = {"batch_tok_s": tokens / batch_s, "clients_tok_s": client_tokens / clients_s}
        rates["peak_rss_mb"] = server.memory.peak() / 1e6
        return rates, vectors

    return asyncio.run(go())


def main() -> int:
    args = parse_peer_args("bench.embed", __doc__)
    rates: dict[str, list[dict[str, float]]] = {label: [] for label in PEERS}
    agreement: list[float] = []
    vectors: dict[str, list[list[float]]] = {}
    turns = peer_turns(args, _turn, llama_server_flags=LLAMA_SERVER_FLAGS)
    for rep, label, (rate, got) in turns:
        rates[label].append(rate)
        vectors[label] = got
        print(f"repeat {rep + 1}: {label:12s} " + "  ".join(
            f"{k} {v:7.1f}" for k, v in rate.items()
        ), flush=True)  # fmt: skip
        if len(vectors) == len(PEERS):  # both servers' vectors of this repeat
            a = np.asarray(vectors.pop("llmd"))
            b = np.asarray(vectors.pop("llama-server"))
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            agreement.extend(float(x) for x in (a * b).sum(axis=1))
    summary = spread(rates)
    for key in ("batch_tok_s", "clients_tok_s"):
        ratio = summary[f"llmd.{key}"]["median"] / summary[f"llama-server.{key}"]["median"]
        summary[f"ratio.{key}"] = ratio
        print(f"{key}: llmd / llama-server = {ratio:.2f}x")
    summary["agreement_cosine_min"] = min(agreement)
    print(f"agreement: cosine between the servers' vectors >= {min(agreement):.5f}")
    write_results(args.json, "embed", args, input_words=INPUT_WORDS, summary=summary, runs=rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
