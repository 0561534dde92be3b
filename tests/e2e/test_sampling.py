"""Sampling parameters honoured by the real model: logit_bias, stop strings (one spanning tokens,
one given as a plain string), seeds for one choice and for n, seeds with the cuts and penalties,
and top_p keeping only the nucleus (checked against the model's own logprobs)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import openai
import pytest

from tests.e2e.api import SMOL, STORY, chunk_text, stream_chat, warm_chat

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

NO_CACHE = {"Cache-Control": "no-cache"}
"""A seed's answer is kept by the response cache: the repeats that test the engine's
reproducibility ask it to compute them again."""


def test_logit_bias_forces_token(daemon: Daemon) -> None:
    resp = daemon.client().completions.create(
        model=SMOL,
        prompt="The sky is",
        max_tokens=4,
        temperature=0,
        logprobs=1,
        logit_bias={"1000": 100},
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens is not None
    assert len(lp.tokens) == 4
    assert len(set(lp.tokens)) == 1, lp.tokens


def _greedy_with_tokens(
    client: openai.OpenAI, messages: list[dict[str, str]]
) -> tuple[str, list[str]]:
    warm_chat(client, messages)
    resp = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=32, temperature=0, logprobs=True
    )
    content = resp.choices[0].message.content
    assert content is not None and resp.choices[0].logprobs is not None
    tokens = [t.token for t in resp.choices[0].logprobs.content or []]
    assert "".join(tokens) == content
    return content, tokens


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_spanning_tokens(daemon: Daemon, stream: bool) -> None:
    client = daemon.client()
    messages = [{"role": "user", "content": "Write a paragraph about cats and their habits."}]
    text, tokens = _greedy_with_tokens(client, messages)
    assert len(text) > 40, text
    # Token start offsets; choose a stop string that starts inside one token and ends in a
    # later one, from the middle of the text, with a space in it.
    starts = []
    pos = 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    stop = None
    for begin in range(len(text) // 3, len(text) - 12):
        candidate = text[begin : begin + 9]
        if " " not in candidate.strip() or text.find(candidate) != begin:
            continue
        if begin in starts:  # begin strictly inside a token: the stop is split mid-token
            continue
        first_tok = max(i for i, s in enumerate(starts) if s <= begin)
        last_tok = max(i for i, s in enumerate(starts) if s < begin + len(candidate))
        if last_tok - first_tok >= 1:
            stop = candidate
            break
    assert stop is not None, (text, tokens)
    expected = text[: text.find(stop)]

    kw: dict[str, Any] = dict(model=SMOL, messages=messages, max_tokens=32, temperature=0)
    if stream:
        chunks = stream_chat(client, stop=[stop], **kw)
        got = chunk_text(chunks)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        finish = [f for f in finishes if f is not None]
        assert finish == ["stop"]
        for c in chunks:
            if c.choices and c.choices[0].delta.content:
                assert stop not in c.choices[0].delta.content
    else:
        resp = client.chat.completions.create(stop=[stop], **kw)
        got = resp.choices[0].message.content or ""
        assert resp.choices[0].finish_reason == "stop"
    assert got == expected, (stop, text)
    assert stop not in got


def test_stop_string_as_plain_string(daemon: Daemon) -> None:
    client = daemon.client()
    messages = [{"role": "user", "content": "Count from one to ten in words, comma separated."}]
    text, _ = _greedy_with_tokens(client, messages)
    # One character that occurs in the text: the answer ends before its first occurrence.
    ch = next(c for c in text[3:] if c in ",. ")
    resp = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=32, temperature=0, stop=ch
    )
    assert resp.choices[0].message.content == text[: text.index(ch, 0)]
    assert resp.choices[0].finish_reason == "stop"


def test_seed_determinism(daemon: Daemon) -> None:
    client = daemon.client()

    def sample(seed: int) -> str:
        resp = client.chat.completions.create(
            model=SMOL,
            messages=STORY,
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_headers=NO_CACHE,
        )
        return resp.choices[0].message.content or ""

    warm_chat(client, STORY)
    first = sample(1234)
    assert first
    assert sample(1234) == first
    others = [sample(s) for s in (1, 2, 3)]
    assert len({first, *others}) > 1, others


def test_n_seeded_choices_are_reproducible(daemon: Daemon) -> None:
    client = daemon.client()
    warm_chat(client, STORY)

    def texts() -> list[str]:
        resp = client.chat.completions.create(
            model=SMOL,
            messages=STORY,
            max_tokens=12,
            temperature=1.0,
            n=2,
            seed=99,
            extra_headers=NO_CACHE,
        )
        return [c.message.content or "" for c in resp.choices]

    assert texts() == texts()


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.7, "top_p": 0.95},
        {"temperature": 1.0, "extra_body": {"top_k": 40, "min_p": 0.05}},
        {"temperature": 1.0, "frequency_penalty": 0.8, "presence_penalty": 0.5},
    ],
    ids=["top_p", "top_k-min_p", "penalties"],
)
def test_seeds_reproduce_with_cuts_and_penalties(daemon: Daemon, params: dict[str, Any]) -> None:
    client = daemon.client()
    warm_chat(client, STORY)

    def sample(seed: int) -> str:
        resp = client.chat.completions.create(
            model=SMOL,
            messages=STORY,
            max_tokens=24,
            seed=seed,
            extra_headers=NO_CACHE,
            **params,
        )
        return resp.choices[0].message.content or ""

    first = sample(5)
    assert first and sample(5) == first
    assert any(sample(s) != first for s in (6, 7, 8))


def test_top_p_keeps_only_the_nucleus(daemon: Daemon) -> None:
    """At temperature 1 without penalties the sampled distribution is the model's own, which
    logprobs report: every token drawn under top_p 0.5 must be one the tokens more likely than
    it leave room for (their mass under 0.5). Without the cut, seeds 1-4 draw outside it."""
    client = daemon.client()
    warm_chat(client, STORY)

    def outside(seed: int, top_p: float) -> int:
        resp = client.chat.completions.create(
            model=SMOL,
            messages=STORY,
            max_tokens=32,
            temperature=1.0,
            top_p=top_p,
            seed=seed,
            logprobs=True,
            top_logprobs=20,
            extra_headers=NO_CACHE,
        )
        logprobs = resp.choices[0].logprobs
        assert logprobs is not None and logprobs.content
        count = 0
        for item in logprobs.content:
            before = sum(math.exp(t.logprob) for t in item.top_logprobs if t.logprob > item.logprob)
            count += before >= 0.5 + 1e-4
        return count

    assert all(outside(seed, 0.5) == 0 for seed in (1, 2, 3, 4))
    assert sum(outside(seed, 1.0) for seed in (1, 2, 3, 4)) > 0


def test_a_tiny_top_p_is_greedy(daemon: Daemon) -> None:
    client = daemon.client()
    messages = [{"role": "user", "content": "Name three colours."}]
    greedy, _ = _greedy_with_tokens(client, messages)
    resp = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=32, temperature=1.0, top_p=1e-6, seed=3
    )
    assert resp.choices[0].message.content == greedy
