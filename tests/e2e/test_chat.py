"""Chat completions through the real daemon and models: the answer and its usage, max_tokens,
content parts, aliases and the default model, a built-in chat template, n choices, the raw
body against OpenAI's schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.contracts import validate, validate_chat_stream
from tests.e2e.api import (
    GEMMA,
    SMOL,
    STORY,
    chat_body,
    post,
    sse_data,
    warm_chat,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


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


def test_chat_body_matches_openai_schema(daemon: Daemon) -> None:
    """The raw body, n choices with logprobs, as OpenAI's CreateChatCompletionResponse says."""
    body = chat_body(n=2, logprobs=True, top_logprobs=2, max_tokens=6)
    resp = post(daemon, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert len(answer["choices"]) == 2 and answer["choices"][0]["logprobs"]["content"]
    validate("CreateChatCompletionResponse", answer)


def test_system_fingerprint_matches_openai_schema(daemon: Daemon) -> None:
    resp = post(daemon, "/v1/chat/completions", chat_body())
    assert resp.status_code == 200, resp.text
    validate("CreateChatCompletionResponse", resp.json())
    validate_chat_stream(sse_data(post(daemon, "/v1/chat/completions", chat_body(stream=True))))
    body = {"model": GEMMA, "prompt": "The sky is", "max_tokens": 2}
    validate("CreateCompletionResponse", post(daemon, "/v1/completions", body).json())
