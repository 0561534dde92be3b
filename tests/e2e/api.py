"""What the tests of the OpenAI API share: the model names, a long prompt, a raw POST and the
data of a raw SSE answer, the shape of an error body (checked against OpenAI's ErrorResponse),
llmd's one known departure from OpenAI's schemas, one model's health entry, and helpers that
stream a chat and warm the prefix cache."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import openai

from tests.contracts import validate

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

SMOL = "smollm2"
GEMMA = "gemma3-270m"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
"""The weather tool's parameters, which the tool tests of every API (chat completions,
Responses, Messages) wrap in their own tool shape."""
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
"""The weather tool as chat completions take it."""
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who lives in a castle."}]


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


def sse_data(resp: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of each `data:` event of a raw SSE answer, which must end with `data: [DONE]`."""
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    events = [e for e in resp.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert events and events[-1] == "data: [DONE]", events[-3:]
    chunks = []
    for event in events[:-1]:
        # One data line an event, no named events: what the SDK's stream reader expects here.
        assert event.startswith("data: ") and "\n" not in event, event
        chunks.append(json.loads(event.removeprefix("data: ")))
    return chunks


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
    validate("ErrorResponse", body)
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


def speculation(daemon: Daemon, model: str) -> tuple[int, int]:
    """A model's drafted and accepted tokens so far (/api/v1/health)."""
    spec = model_health(daemon, model)["speculative"]
    return int(spec["drafted_tokens"]), int(spec["accepted_tokens"])


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
