"""Server-sent streams through the real daemon: the same text as without streaming, the raw SSE
ending with [DONE], every chunk against OpenAI's schema, n choices and completions streamed with
usage, 16 streams at once, and a client that goes away freeing its slot."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import openai
import pytest

from tests.contracts import validate_chat_stream, validate_completion_stream
from tests.e2e.api import (
    GEMMA,
    SMOL,
    STORY,
    chat_body,
    chunk_text,
    model_health,
    post,
    sse_data,
    stream_chat,
    warm_chat,
    warm_completion,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def test_chat_stream_matches_non_stream(daemon: Daemon) -> None:
    client = daemon.client()
    messages = [{"role": "user", "content": "Describe a sunny day at the beach."}]
    warm_chat(client, messages)
    full = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=24, temperature=0, seed=7
    )
    assert full.usage is not None
    chunks = stream_chat(
        client, model=SMOL, messages=messages, max_tokens=24, temperature=0, seed=7
    )

    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    text = chunk_text(chunks)
    assert text == full.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason == full.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # Only the final chunk carries usage.
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_stream_chunks_match_openai_schema(daemon: Daemon, include_usage: bool) -> None:
    """Every raw chunk, n choices with logprobs, usage or not, as OpenAI's
    CreateChatCompletionStreamResponse says."""
    body = chat_body(
        n=2,
        logprobs=True,
        top_logprobs=2,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = sse_data(post(daemon, "/v1/chat/completions", body))
    assert [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert (chunks[-1].get("usage") is not None) == include_usage
    validate_chat_stream(chunks)


def test_completion_stream_chunks_match_openai_schema(daemon: Daemon) -> None:
    body = {
        "model": GEMMA,
        "prompt": "The weather today is",
        "max_tokens": 4,
        "n": 2,
        "logprobs": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_data(post(daemon, "/v1/completions", body))
    assert chunks[-1]["usage"] is not None
    validate_completion_stream(chunks)


def test_n_choices_stream(daemon: Daemon) -> None:
    client = daemon.client()
    chunks = stream_chat(
        client,
        model=SMOL,
        messages=STORY,
        max_tokens=8,
        temperature=1.0,
        n=2,
        extra_body={"ignore_eos": True},
    )
    by_index: dict[int, list[Any]] = {}
    for c in chunks:
        for ch in c.choices:
            by_index.setdefault(ch.index, []).append(ch)
    assert sorted(by_index) == [0, 1]
    for index in (0, 1):
        deltas = by_index[index]
        assert deltas[0].delta.role == "assistant"
        assert "".join(d.delta.content or "" for d in deltas)
        assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16


def test_completion_stream_with_usage(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = "The weather today is"
    warm_completion(client, prompt)
    full = client.completions.create(
        model=GEMMA, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    chunks = list(
        client.completions.create(
            model=GEMMA,
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert full.usage is not None
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_concurrent_streams(daemon: Daemon) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, int, str]:
        stream = await client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": f"Write story number {i} about a robot."}],
            max_tokens=32,
            temperature=0.8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        content_chunks = 0
        text = ""
        usage_tokens = -1
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                content_chunks += 1
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
        return usage_tokens, content_chunks, text

    async def main() -> list[tuple[int, int, str]]:
        client = daemon.async_client()
        try:
            return await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(16))), 150)
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(results) == 16
    for usage_tokens, content_chunks, text in results:
        assert usage_tokens == 32
        assert content_chunks >= 1
        assert text
    smol = model_health(daemon)
    assert smol["running"] == 0 and smol["queued"] == 0


def test_answers_ending_at_different_times_leave_the_others_as_alone(daemon: Daemon) -> None:
    """Streams side by side whose answers end at different steps: the slots of the short
    ones go free between running ones and get filler tokens (llmd/engine/admission.py,
    `gap_fillers`). Each answer, seeded, is the one it gives alone."""
    lengths = [40, 6, 40, 10, 40]

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        answer = await client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": f"Tell story {i} about a lighthouse."}],
            max_tokens=lengths[i],
            temperature=0.8,
            seed=100 + i,
            extra_body={"ignore_eos": True},
        )
        return answer.choices[0].message.content or ""

    async def main(together: bool) -> list[str]:
        client = daemon.async_client()
        try:
            if together:
                runs = asyncio.gather(*(one(client, i) for i in range(len(lengths))))
                return list(await asyncio.wait_for(runs, 150))
            return [await asyncio.wait_for(one(client, i), 60) for i in range(len(lengths))]
        finally:
            await client.close()

    together = asyncio.run(main(True))
    alone = asyncio.run(main(False))
    assert together == alone
    assert all(together)


def test_client_disconnect_frees_slot(daemon: Daemon) -> None:
    body = chat_body(
        max_tokens=900, stream=True, ignore_eos=True, messages=[{"role": "user", "content": "Go"}]
    )
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("content" in line for line in got)
    deadline = time.monotonic() + 10
    while True:
        smol = model_health(daemon)
        if smol["requests_in_flight"] == 0 and smol["running"] == 0:
            break
        assert time.monotonic() < deadline, smol
        time.sleep(0.1)
