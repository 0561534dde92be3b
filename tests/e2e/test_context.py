"""The context length through the real daemon: prompts and max_tokens that do not fit are
refused with the numbers, and without max_tokens an answer gets what the context leaves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest

from tests.e2e.api import SMOL, assert_error, model_health

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


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
