"""Structured output end to end: `response_format` (JSON mode, JSON schema) and llmd's `grammar`
extension, through the real daemon and models with the official client."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import pytest

from tests.schemas import Cat

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

ASK = [{"role": "user", "content": "Describe a cat as a JSON object with its name and age."}]


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no", "maybe"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


def _schema_format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_json_object_mode_writes_a_json_object(daemon: Daemon) -> None:
    client = daemon.client()
    free = client.chat.completions.create(
        model="smollm2",
        messages=ASK,
        temperature=0,
        max_tokens=120,  # type: ignore[arg-type]
    )
    # Unconstrained, this model wraps its JSON in a markdown fence and talks on after it.
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content or "")
    held = client.chat.completions.create(
        model="smollm2",
        messages=ASK,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_object"},
    )
    choice = held.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_sdk_parse_into_a_pydantic_model(daemon: Daemon, seed: int | None) -> None:
    """What `client.chat.completions.parse(response_format=Model)` sends (a strict JSON schema
    with enums, a bounded string, an integer and a boolean), greedy and sampled at
    temperature 1, where the model's own choice often breaks the grammar and is redone."""
    result = daemon.client().chat.completions.parse(
        model="smollm2",
        messages=ASK,  # type: ignore[arg-type]
        temperature=0 if seed is None else 1.0,
        seed=seed,
        max_tokens=150,
        response_format=Cat,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Cat)
    assert result.usage is not None and result.usage.completion_tokens > 5


def test_streamed_structured_output_is_valid_and_counted(daemon: Daemon) -> None:
    stream = daemon.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Is water wet? Answer in JSON."}],
        temperature=0.8,
        seed=5,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        response_format=_schema_format(ANSWER_SCHEMA),
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "stop"
    assert json.loads(text)["answer"] in ("yes", "no", "maybe")
    assert usage is not None and usage.completion_tokens >= 3


def test_every_choice_follows_the_grammar(daemon: Daemon) -> None:
    result = daemon.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Will it rain tomorrow?"}],
        temperature=1.0,
        n=3,
        seed=11,
        max_tokens=40,
        response_format=_schema_format(ANSWER_SCHEMA),
    )
    assert len(result.choices) == 3
    for choice in result.choices:
        assert set(json.loads(choice.message.content or "")) == {"answer"}


def test_grammar_extension_on_chat_and_completions(daemon: Daemon) -> None:
    client = daemon.client()
    yes_no = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Is the sky green?"}],
        temperature=0,
        max_tokens=10,
        # ignore_eos would run to max_tokens; a complete grammar ends the answer regardless.
        extra_body={"grammar": 'root ::= "yes" | "no"', "ignore_eos": True},
    )
    assert yes_no.choices[0].message.content in ("yes", "no")
    assert yes_no.choices[0].finish_reason == "stop"
    number = client.completions.create(
        model="smollm2",
        prompt="The year the first moon landing happened was",
        temperature=0,
        max_tokens=12,
        extra_body={"grammar": 'root ::= " " [1-9] [0-9] [0-9] [0-9] "."'},
    )
    text = number.choices[0].text
    assert len(text) == 6 and text[1:5].isdigit() and text.endswith(".")


def test_json_mode_on_completions_with_a_large_vocabulary(daemon: Daemon) -> None:
    """Gemma-3's 262k-token vocabulary, sampled: the whole-vocabulary path at its largest."""
    result = daemon.client().completions.create(
        model="gemma3-270m",
        prompt="A person, as JSON:",
        temperature=1.0,
        seed=4,
        max_tokens=60,
        extra_body={"response_format": _schema_format(ANSWER_SCHEMA)},
    )
    assert json.loads(result.choices[0].text)["answer"] in ("yes", "no", "maybe")


# What only the model process can refuse: a schema or grammar llama.cpp cannot compile or
# would not survive. The checks made before the engine are tested in-process
# (tests/unit/test_serving_chat.py's STRUCTURED cases).
BAD = [
    (
        {"response_format": _schema_format({"type": "nonsense"})},
        "response_format.json_schema.schema",
    ),
    (
        {"response_format": _schema_format({"$ref": "https://example.com/s.json"})},
        "response_format.json_schema.schema",
    ),
    ({"grammar": "root ::= undefined-rule"}, "grammar"),
    ({"grammar": 'start ::= "a"'}, "grammar"),
    # Deeper than llama.cpp's recursive parser survives (~18,000 levels kill the process).
    (
        {"response_format": _schema_format({"type": "string", "maxLength": 20000})},
        "response_format.json_schema.schema",
    ),
    ({"grammar": "root ::= " + "(" * 20000 + '"a"' + ")" * 20000}, "grammar"),
]


@pytest.mark.parametrize(("extra", "param"), BAD)
def test_bad_structured_requests_are_400_and_harm_nothing(
    daemon: Daemon, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 4, **extra}
    resp = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    # The model process refused the request and serves on.
    ok = daemon.client().chat.completions.create(
        model="smollm2",
        messages=ASK,
        max_tokens=3,  # type: ignore[arg-type]
    )
    assert ok.choices[0].finish_reason == "length"


def test_a_grammar_nothing_can_follow_ends_the_answer(daemon: Daemon) -> None:
    """No token writes a NUL byte: after "ok" nothing is allowed. llama.cpp would abort the
    model process if a refused token were accepted; the answer ends instead."""
    pid = _smollm2(daemon)["pid"]
    result = daemon.client().chat.completions.create(
        model="smollm2",
        messages=ASK,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=10,
        extra_body={"grammar": 'root ::= "ok" [\\x00]'},
    )
    assert result.choices[0].message.content == "ok"
    assert result.choices[0].finish_reason == "stop"
    assert _smollm2(daemon)["pid"] == pid  # the same model process serves on


def _smollm2(daemon: Daemon) -> dict[str, Any]:
    models: list[dict[str, Any]] = daemon.health()["models"]  # type: ignore[assignment]
    return next(m for m in models if m["name"] == "smollm2")
