"""The OpenAI-compatible API end to end: the real daemon, the real models, the official client."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import openai
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

SMOL = "smollm2"
GEMMA = "gemma3-270m"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who lives in a castle."}]


# -- helpers ----------------------------------------------------------------------------------


def post(
    daemon: Daemon, path: str, body: Any = None, content: bytes | None = None
) -> httpx.Response:
    if content is not None:
        return httpx.post(
            daemon.url + path,
            content=content,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    return httpx.post(daemon.url + path, json=body, timeout=60)


def assert_error(
    resp: httpx.Response,
    status: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The response is an OpenAI-shaped error with this status (and param / code if given)."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "param" in error and "code" in error, error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


def model_health(daemon: Daemon, name: str = SMOL) -> dict[str, Any]:
    """One model's entry in /api/v1/health."""
    models: list[dict[str, Any]] = daemon.health()["models"]  # type: ignore[assignment]
    return next(m for m in models if m["name"] == name)


def chat_body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": SMOL, "messages": STORY, "max_tokens": 8}
    body.update(kw)
    return body


def stream_chat(client: openai.OpenAI, **kw: Any) -> list[Any]:
    stream = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw
    )
    return list(stream)


def warm_chat(client: openai.OpenAI, messages: Any, model: str = SMOL) -> None:
    """Put a prompt in the prefix cache, so that the requests compared next both reuse it.

    llama.cpp's batched prompt path and its one-token path are not bit-identical: a prompt
    read fresh and the same prompt found in the cache can give slightly different logits, and
    so different greedy text. Requests whose texts a test compares must both find it cached.
    """
    client.chat.completions.create(model=model, messages=messages, max_tokens=1)


def warm_completion(client: openai.OpenAI, prompt: Any, model: str = GEMMA) -> None:
    client.completions.create(model=model, prompt=prompt, max_tokens=1)


def chunk_text(chunks: list[Any], index: int = 0) -> str:
    return "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if c.choices and c.choices[0].index == index
    )


# -- chat completions ---------------------------------------------------------------------------


def test_chat_completion_basic(daemon: Daemon) -> None:
    client = daemon.client()
    resp = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert resp.object == "chat.completion"
    assert resp.model == SMOL
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = resp.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_max_tokens_limits_length(daemon: Daemon, field: str) -> None:
    client = daemon.client()
    resp = client.chat.completions.create(model=SMOL, messages=STORY, temperature=0, **{field: 5})
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5


def test_chat_content_parts(daemon: Daemon) -> None:
    client = daemon.client()
    parts = [
        {"type": "text", "text": "Tell me a long story "},
        {"type": "text", "text": "about a dragon who lives in a castle."},
    ]
    warm_chat(client, STORY)
    a = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    b = client.chat.completions.create(model=SMOL, messages=STORY, max_tokens=8, temperature=0)
    assert a.usage is not None and b.usage is not None
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content


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


def test_chat_alias_and_default_model(daemon: Daemon) -> None:
    client = daemon.client()
    warm_chat(client, STORY)
    by_alias = client.chat.completions.create(
        model="smol", messages=STORY, max_tokens=6, temperature=0
    )
    by_name = client.chat.completions.create(
        model=SMOL, messages=STORY, max_tokens=6, temperature=0
    )
    assert by_alias.model == "smol"
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    # No model at all: the configured default (smollm2) answers.
    raw = post(
        daemon, "/v1/chat/completions", {"messages": STORY, "max_tokens": 6, "temperature": 0}
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["choices"][0]["message"]["content"] == by_name.choices[0].message.content


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


def test_chat_stream_raw_sse_ends_with_done(daemon: Daemon) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    assert lines.count("data: [DONE]") == 1
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["completion_tokens"] == 8


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
            model=SMOL, messages=STORY, max_tokens=16, temperature=1.0, seed=seed
        )
        return resp.choices[0].message.content or ""

    warm_chat(client, STORY)
    first = sample(1234)
    assert first
    assert sample(1234) == first
    others = [sample(s) for s in (1, 2, 3)]
    assert len({first, *others}) > 1, others


def test_n_choices(daemon: Daemon) -> None:
    client = daemon.client()
    resp = client.chat.completions.create(
        model=SMOL,
        messages=STORY,
        max_tokens=8,
        temperature=1.0,
        n=2,
        logprobs=True,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in resp.choices] == [0, 1]
    counts = []
    for c in resp.choices:
        assert c.finish_reason == "length"
        assert c.message.content
        assert c.logprobs is not None and c.logprobs.content is not None
        counts.append(len(c.logprobs.content))
    assert counts == [8, 8]
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 16 == sum(counts)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 16


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


def test_n_seeded_choices_are_reproducible(daemon: Daemon) -> None:
    client = daemon.client()
    warm_chat(client, STORY)

    def texts() -> list[str]:
        resp = client.chat.completions.create(
            model=SMOL, messages=STORY, max_tokens=12, temperature=1.0, n=2, seed=99
        )
        return [c.message.content or "" for c in resp.choices]

    assert texts() == texts()


# -- logprobs -----------------------------------------------------------------------------------


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


def test_chat_without_logprobs_has_none(daemon: Daemon) -> None:
    resp = daemon.client().chat.completions.create(model=SMOL, messages=STORY, max_tokens=4)
    assert resp.choices[0].logprobs is None


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


# -- text completions ---------------------------------------------------------------------------


def test_completion_string_prompt(daemon: Daemon) -> None:
    resp = daemon.client().completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert resp.object == "text_completion"
    assert resp.model == GEMMA
    assert len(resp.choices) == 1
    assert resp.choices[0].index == 0
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_completion_prompt_list(daemon: Daemon) -> None:
    client = daemon.client()
    prompts = ["The capital of France is", "One, two, three,"]
    warm_completion(client, prompts)
    single = [
        client.completions.create(model=GEMMA, prompt=p, max_tokens=6, temperature=0)
        for p in prompts
    ]
    resp = client.completions.create(model=GEMMA, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.text for c in resp.choices] == [s.choices[0].text for s in single]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single if s.usage)
    assert resp.usage.completion_tokens == sum(s.usage.completion_tokens for s in single if s.usage)


def test_completion_echo(daemon: Daemon) -> None:
    prompt = "Roses are red, violets are"
    client = daemon.client()
    warm_completion(client, prompt)
    plain = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=6, temperature=0)
    echoed = client.completions.create(
        model=GEMMA, prompt=prompt, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + plain.choices[0].text


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


def test_completion_token_id_prompt(daemon: Daemon) -> None:
    client = daemon.client()
    ids = [2, 818, 5279, 529, 7001, 563]
    warm_completion(client, ids)
    resp = client.completions.create(model=GEMMA, prompt=ids, max_tokens=6, temperature=0)
    assert resp.choices[0].text
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(ids)
    # A batch of token-id prompts: one choice each.
    batch = client.completions.create(
        model=GEMMA, prompt=[ids, ids[:3]], max_tokens=4, temperature=0
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.usage is not None and batch.usage.prompt_tokens == len(ids) + 3
    # echo of a token prompt gives its text back in front.
    echoed = client.completions.create(
        model=GEMMA, prompt=ids, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text.endswith(resp.choices[0].text)
    assert len(echoed.choices[0].text) > len(resp.choices[0].text)


def test_completion_on_chat_model(daemon: Daemon) -> None:
    resp = daemon.client().completions.create(
        model=SMOL, prompt="Hello, my name is", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_chat_on_gemma_builtin_template(daemon: Daemon) -> None:
    resp = daemon.client().chat.completions.create(
        model=GEMMA,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."},
        ],
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert resp.model == GEMMA
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].message.content
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 10


# -- models -------------------------------------------------------------------------------------


def test_models_list_and_retrieve(daemon: Daemon) -> None:
    client = daemon.client()
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert sorted(ids) == sorted([SMOL, "smol", GEMMA])
    for m in models.data:
        assert m.object == "model"
        assert m.owned_by
        assert m.created > 0
    got = client.models.retrieve(SMOL)
    assert got.id == SMOL and got.object == "model"
    assert client.models.retrieve("smol").id == "smol"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert_error(err.value.response, 404, code="model_not_found")


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_404(daemon: Daemon) -> None:
    client = daemon.client()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=STORY, max_tokens=4)
    assert err.value.code == "model_not_found"
    assert_error(err.value.response, 404, param="model", code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=4)


def test_bad_json_bodies(daemon: Daemon) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert_error(post(daemon, path, content=b"{not json"), 400)
        assert_error(post(daemon, path, content=b""), 400)
        assert_error(post(daemon, path, content=b"\xff\xfe\x00"), 400)
        assert_error(post(daemon, path, [1, 2]), 400)
        assert_error(post(daemon, path, "just a string"), 400)
        assert_error(post(daemon, path, None), 400)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"messages": [{"content": "x"}]}, None),
        ({"temperature": 5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 1000}}, "logit_bias"),
        ({"logit_bias": {"999999999": 1}}, "logit_bias"),
        ({"top_logprobs": 3}, None),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"stop": ["x"] * 20}, "stop"),
        ({"stream": "yes please"}, "stream"),
        ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
        ({"stream_options": 5}, "stream_options"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"n": 17}, "n"),
    ],
    ids=lambda v: json.dumps(v)[:48] if isinstance(v, dict) else str(v),
)
def test_chat_invalid_params(daemon: Daemon, change: dict[str, Any], param: str | None) -> None:
    body = chat_body(**change)
    if change.get("messages", 1) is None:
        del body["messages"]
    resp = post(daemon, "/v1/chat/completions", body)
    error = assert_error(resp, 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_invalid_params_through_sdk(daemon: Daemon) -> None:
    client = daemon.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=STORY, temperature=5)
    assert err.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=STORY, top_logprobs=3)
    assert "logprobs" in err.value.message


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [-1, 5]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"logprobs": 50}, "logprobs"),
        ({"suffix": "tail"}, "suffix"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 3}, "n"),
        ({"echo": "sure"}, "echo"),
    ],
    ids=lambda v: json.dumps(v)[:48] if isinstance(v, dict) else str(v),
)
def test_completion_invalid_params(
    daemon: Daemon, change: dict[str, Any], param: str | None
) -> None:
    body: dict[str, Any] = {"model": GEMMA, "prompt": "hi", "max_tokens": 4}
    body.update(change)
    if body["prompt"] is None:
        del body["prompt"]
    error = assert_error(post(daemon, "/v1/completions", body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_unknown_route_and_wrong_method(daemon: Daemon) -> None:
    resp = httpx.get(daemon.url + "/v1/nope", timeout=10)
    error = assert_error(resp, 404)
    assert "/v1/nope" in error["message"]
    resp = httpx.post(daemon.url + "/v1/nope", json={}, timeout=10)
    assert_error(resp, 404)
    resp = httpx.get(daemon.url + "/v1/chat/completions", timeout=10)
    assert_error(resp, 405)
    resp = httpx.get(daemon.url + "/v1/completions", timeout=10)
    assert_error(resp, 405)
    resp = httpx.delete(daemon.url + "/v1/models", timeout=10)
    assert_error(resp, 405)


def test_still_serving_after_errors(daemon: Daemon) -> None:
    # The errors above left nothing broken: a normal request still works.
    resp = daemon.client().chat.completions.create(model=SMOL, messages=STORY, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens <= 3


def test_lone_surrogate_does_not_crash_the_model(make_daemon: Callable[..., Daemon]) -> None:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"); that is no valid text to tokenize.

    The request must get a 4xx (or be served with the character replaced), and the model
    process must not die: a crash would fail every other request in flight on that model.
    """
    d = make_daemon(
        f"""
[engine]
ctx_per_seq = 512
parallel = 2

[models.smollm2]
path = "{SMOL_FILE}"
"""
    )
    before = model_health(d)
    assert before["state"] == "ready"
    chat = b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}], "max_tokens": 2}'
    completion = b'{"prompt": "hi \\udfff", "max_tokens": 2}'
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        resp = post(d, path, content=body)
        assert resp.status_code in (200, 400), (path, resp.status_code, resp.text)
        if resp.status_code == 400:
            assert_error(resp, 400)
    after = model_health(d)
    assert after["restarts"] == 0, after
    assert after["pid"] == before["pid"], after
    assert after["state"] == "ready", after
    ok = d.client().chat.completions.create(messages=STORY, model=SMOL, max_tokens=2)
    assert ok.choices[0].message.content is not None


# -- context length -----------------------------------------------------------------------------


def test_prompt_longer_than_context(daemon: Daemon) -> None:
    client = daemon.client()
    long = [{"role": "user", "content": "hello " * 1500}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=long, max_tokens=8)
    assert err.value.code == "context_length_exceeded"
    assert "1024" in err.value.message
    error = assert_error(err.value.response, 400, code="context_length_exceeded")
    assert error["type"] == "invalid_request_error"
    # Also without max_tokens, and on the completions endpoint.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=long)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=SMOL, prompt="hello " * 1500, max_tokens=8)
    assert err.value.code == "context_length_exceeded"
    # Streaming requests fail before the stream starts: a plain 400 as well.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=long, max_tokens=8, stream=True)
    assert err.value.code == "context_length_exceeded"


def test_max_tokens_beyond_context(daemon: Daemon) -> None:
    client = daemon.client()
    messages = [{"role": "user", "content": "Tell me about the history of Rome. " * 10}]
    probe = client.chat.completions.create(model=SMOL, messages=messages, max_tokens=1)
    assert probe.usage is not None
    n_prompt = probe.usage.prompt_tokens
    assert 50 < n_prompt < 200
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMOL, messages=messages, max_tokens=1000)
    assert err.value.code == "context_length_exceeded"
    assert "1024" in err.value.message
    assert "1000" in err.value.message
    assert str(n_prompt) in err.value.message
    # Exactly filling the context is allowed; one more token is not.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=SMOL, messages=messages, max_tokens=1024 - n_prompt + 1
        )


def test_default_max_tokens_is_what_context_leaves(daemon: Daemon) -> None:
    client = daemon.client()

    def ask(words: int, **kw: Any) -> Any:
        return client.completions.create(model=SMOL, prompt="hello " * words, **kw)

    probe = ask(1000, max_tokens=1)
    assert probe.usage is not None
    n_prompt = probe.usage.prompt_tokens
    assert 1000 <= n_prompt <= 1016, n_prompt
    room = 1024 - n_prompt
    resp = ask(1000, temperature=0, extra_body={"ignore_eos": True})
    assert resp.usage is not None
    assert resp.usage.completion_tokens == room
    assert resp.choices[0].finish_reason == "length"
    ok = ask(1000, max_tokens=room, extra_body={"ignore_eos": True})
    assert ok.usage is not None and ok.usage.completion_tokens == room
    with pytest.raises(openai.BadRequestError) as err:
        ask(1000, max_tokens=room + 1)
    assert err.value.code == "context_length_exceeded"


def test_one_prompt_of_a_batch_too_long(daemon: Daemon) -> None:
    client = daemon.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=SMOL, prompt=["Hi there", "hello " * 1500], max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    # The prompt that fit was withdrawn along with the request.
    resp = client.completions.create(model=SMOL, prompt="Hi there", max_tokens=4)
    assert resp.usage is not None and resp.usage.completion_tokens <= 4
    assert model_health(daemon)["requests_in_flight"] == 0


def test_short_prompt_without_max_tokens(daemon: Daemon) -> None:
    resp = daemon.client().chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Say hi."}],
        temperature=0,
        stop=["\n", "."],
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content is not None


# -- prefix reuse -------------------------------------------------------------------------------


def _system_prompt() -> str:
    tag = uuid.uuid4().hex[:8]
    facts = " ".join(
        f"Rule {i}: the assistant {tag} always answers politely and briefly about topic {i}."
        for i in range(20)
    )
    return f"You are assistant {tag}. {facts}"


def test_prefix_reuse_shared_system_prompt(daemon: Daemon) -> None:
    client = daemon.client()
    system = _system_prompt()

    def ask(question: str) -> Any:
        return client.chat.completions.create(
            model=SMOL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            max_tokens=8,
            temperature=0,
        )

    first = ask("What is the weather like?")
    assert first.usage is not None
    assert first.usage.prompt_tokens >= 300
    details = first.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens < 50
    second = ask("Name a fruit.")
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 250
    assert details.cached_tokens < second.usage.prompt_tokens


def test_prefix_reuse_multi_turn(daemon: Daemon) -> None:
    client = daemon.client()
    messages: list[dict[str, str]] = [
        {"role": "system", "content": _system_prompt()},
        {"role": "user", "content": "Tell me about apples."},
    ]
    turn1 = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=16, temperature=0
    )
    assert turn1.usage is not None
    messages += [
        {"role": "assistant", "content": turn1.choices[0].message.content or ""},
        {"role": "user", "content": "And pears?"},
    ]
    turn2 = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=8, temperature=0
    )
    assert turn2.usage is not None
    details = turn2.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= turn1.usage.prompt_tokens - 4
    assert details.cached_tokens < turn2.usage.prompt_tokens


def test_cached_prefix_gives_same_result(daemon: Daemon) -> None:
    """A reused prefix is the same KV the prompt would get again: same logprobs, same text.

    The prompt is 257 token ids: computed fresh, the engine (batch_size 256) reads 256 tokens
    and then decodes the last one alone, which is exactly what the second request, reusing the
    first 256 from the cache, does too. So the two must agree to float precision; prompts of
    other lengths may differ a little, llama.cpp's batched and single-token paths not being
    bit-identical.
    """
    client = daemon.client()
    rng = random.Random(uuid.uuid4().int)
    ids = [rng.randrange(1000, 40000) for _ in range(257)]
    runs = [
        client.completions.create(
            model=SMOL,
            prompt=ids,
            max_tokens=12,
            temperature=0,
            logprobs=1,
            extra_body={"ignore_eos": True},
        )
        for _ in range(2)
    ]
    first, second = runs
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 257
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == 256
    assert second.choices[0].text == first.choices[0].text
    a, b = first.choices[0].logprobs, second.choices[0].logprobs
    assert a is not None and b is not None and a.token_logprobs and b.token_logprobs
    assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-3)


# -- concurrency --------------------------------------------------------------------------------


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


# -- health -------------------------------------------------------------------------------------


def test_health_endpoints(daemon: Daemon) -> None:
    resp = httpx.get(daemon.url + "/health", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    resp = httpx.get(daemon.url + "/ready", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["status"] == "ready"
    assert resp.json()["model"] == SMOL
    info = daemon.health()
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["uptime_s"], (int, float)) and info["uptime_s"] > 0
    assert info["default_model"] == SMOL
    memory = info["memory"]
    assert isinstance(memory, dict)
    assert memory["daemon_rss_bytes"] > 0
    assert memory["system_total_bytes"] >= memory["system_available_bytes"] > 0
    models = info["models"]
    assert isinstance(models, list)
    assert sorted(m["name"] for m in models) == sorted([SMOL, GEMMA])
    for m in models:
        assert m["state"] == "ready"
        assert m["error"] is None
        assert isinstance(m["pid"], int)
        assert m["queued"] == 0
        assert m["running"] == 0
        assert m["memory_rss_bytes"] > 0
    by_name = {m["name"]: m for m in models}
    assert by_name[SMOL]["aliases"] == ["smol"]
    assert by_name[SMOL]["parallel"] == 16
    assert by_name[SMOL]["ctx_per_seq"] == 1024
    assert by_name[GEMMA]["parallel"] == 2


def test_no_server_errors_logged(daemon: Daemon) -> None:
    """Run last: nothing the tests above sent made the daemon fail or a model process die."""
    logs = daemon.logs()
    assert "Traceback" not in logs, logs[-5000:]
    server_errors = re.findall(r"path=/(?:v1|api)/\S* status=5\d\d .*", logs)
    assert server_errors == []
    for name in (SMOL, GEMMA):
        assert model_health(daemon, name)["restarts"] == 0
