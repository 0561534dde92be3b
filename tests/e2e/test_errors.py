"""OpenAI-shaped errors from the real daemon: unknown models and routes, bad JSON, invalid
parameters of chat and completions (raw and through the SDK), a lone surrogate that must not
crash the model, and the daemon still serving after all of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import openai
import pytest

from tests.e2e.api import GEMMA, SMOL, SMOL_FILE, STORY, assert_error, chat_body, model_health, post

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


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
