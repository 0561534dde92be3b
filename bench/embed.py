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

import argparse
import asyncio
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import openai

from bench.daemon import free_port
from bench.loadgen import make_text
from bench.suite import (
    Server,
    Setup,
    peer_args,
    peer_setup,
    spread,
    start,
    take_turn,
    write_results,
)

INPUT_WORDS = 90  # ~120 tokens


def _server(label: str, s: Setup) -> Server:
    if label == "llmd":
        return start(label, s)
    # llama-server computes embeddings only when started for them.
    assert s.llama_server is not None
    port = free_port()
    argv = [
        str(s.llama_server), "-m", str(s.model.resolve()), "--host", "127.0.0.1",
        "-t", str(s.threads), "-tb", str(s.threads_batch), "-np", str(s.parallel),
        "-c", str(s.ctx * s.parallel), "-a", "bench", "--no-webui",
        "--embeddings", "--pooling", "mean", "--port", str(port),
    ]  # fmt: skip
    return Server(label, argv, port, "/health", s.work / "llama-server.log")


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


def _turn(server: Server, salt: str) -> tuple[dict[str, float], list[list[float]]]:
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
    parser = argparse.ArgumentParser(prog="bench.embed", description=__doc__.split("\n")[0])
    peer_args(parser)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    labels = ["llmd", "llama-server"]
    rates: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    agreement: list[float] = []
    with tempfile.TemporaryDirectory(prefix="llmd-embed-") as tmp:
        s = peer_setup(args, Path(tmp))
        for rep in range(args.repeats):
            vectors: dict[str, list[list[float]]] = {}
            for label in labels if rep % 2 == 0 else labels[::-1]:
                turn = partial(_turn, salt=f"r{rep}")  # the same inputs for both servers
                rate, vectors[label] = take_turn(_server(label, s), turn)
                rates[label].append(rate)
                print(f"repeat {rep + 1}: {label:12s} " + "  ".join(
                    f"{k} {v:7.1f}" for k, v in rate.items()
                ), flush=True)  # fmt: skip
            a = np.asarray(vectors["llmd"])
            b = np.asarray(vectors["llama-server"])
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
