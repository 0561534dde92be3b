"""Log probabilities through the real daemon: chat (whole and streamed), none unless asked, and
completions with their text offsets, echo included."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.e2e.api import GEMMA, SMOL, STORY, chunk_text, stream_chat

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def test_chat_logprobs(daemon: Daemon) -> None:
    client = daemon.client()
    resp = client.chat.completions.create(
        model=SMOL,
        messages=STORY,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == 8
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0
        assert e.bytes is not None and bytes(e.bytes).decode("utf-8", "replace") == e.token
        top = e.top_logprobs
        assert len(top) == 3
        values = [t.logprob for t in top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        # Greedy: the chosen token is the most likely one.
        assert e.token == top[0].token
        assert e.logprob == pytest.approx(top[0].logprob, abs=1e-4)


def test_chat_logprobs_stream(daemon: Daemon) -> None:
    client = daemon.client()
    chunks = stream_chat(
        client,
        model=SMOL,
        messages=STORY,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    entries = []
    for c in chunks:
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            entries.extend(c.choices[0].logprobs.content)
    assert len(entries) == 6
    assert all(len(e.top_logprobs) == 2 for e in entries)
    assert "".join(e.token for e in entries) == chunk_text(chunks)


def test_completion_logprobs(daemon: Daemon) -> None:
    client = daemon.client()
    resp = client.completions.create(
        model=GEMMA,
        prompt="The quick brown fox",
        max_tokens=8,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    lp = choice.logprobs
    assert lp is not None
    assert lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert len(lp.text_offset) == 8
    assert "".join(lp.tokens) == choice.text
    offset = 0
    for token, logprob, top, off in zip(
        lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset, strict=True
    ):
        assert off == offset
        offset += len(token)
        assert logprob <= 0
        assert len(top) == 2
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy
        assert token in top


def test_completion_logprobs_with_echo_offsets(daemon: Daemon) -> None:
    prompt = "Once upon a time"
    resp = daemon.client().completions.create(
        model=GEMMA, prompt=prompt, max_tokens=4, temperature=0, logprobs=1, echo=True
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.text_offset is not None and lp.tokens is not None
    assert resp.choices[0].text.startswith(prompt)
    assert lp.text_offset[0] == len(prompt)
    assert prompt + "".join(lp.tokens) == resp.choices[0].text
