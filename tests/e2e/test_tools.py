"""Tool calling end to end (issue 15), through the real daemon and both real models with the
official client: `required`, named, `none` and `auto` calls held to each tool's schema,
greedy and sampled; the calls streamed as OpenAI's deltas; a round trip with a tool result;
the SDK's `parse` with a pydantic tool; the deprecated `functions` / `function_call`.

The bad requests, and a tool-aware template given as an override, are in test_tools_input.py.

These tiny models, allowed several calls (`parallel_tool_calls`, true by default), mostly
repeat their call until max_tokens: such an answer ends in "length" with its last call cut
short. What the grammar guarantees is checked: every complete call parses and validates
against its tool's schema, and the call format's markup never reaches `content`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx2 as httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.api import GEMMA, SMOL, WEATHER

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

MODELS = [SMOL, GEMMA]
MAX = 100
"""max_tokens for calls: the schemas' strings are bounded, so one call always fits."""
MARKUP = ("<tool_call>", "</tool_call>")

ORDER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "create_order",
        "description": "Order a product to be delivered to an address.",
        "parameters": {
            "type": "object",
            "properties": {
                "product": {"type": "string", "maxLength": 16},
                "size": {"enum": ["small", "medium", "large"]},
                "quantity": {"type": "integer"},
                "ship_to": {
                    "type": "object",
                    "properties": {
                        "street": {"type": "string", "maxLength": 16},
                        "city": {"type": "string", "maxLength": 16},
                    },
                    "required": ["street", "city"],
                    "additionalProperties": False,
                },
                "gift": {"type": "boolean"},
            },
            "required": ["product", "size", "ship_to"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ORDER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
ASK_ORDER = [{"role": "user", "content": "Order two large pizzas to 5 Main Street, Springfield."}]
CHOICES: dict[str, Any] = {
    "required": "required",
    "named": {"type": "function", "function": {"name": "create_order"}},
}
OFFERED = {"required": list(SCHEMAS), "named": ["create_order"]}
ASKED = {"required": ASK_WEATHER, "named": ASK_ORDER}

# Measured: in a conversation holding an earlier call and its result, and a question on,
# Gemma calls again by itself in 3 of seeds 0-7 at temperature 1 (0, 4, 6); SmolLM2 in none.
# (With the model's text answer between the result and the question: in none.)
FOLLOW_UP = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"city": "Paris", "unit": "celsius"}',
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18, "sky": "cloudy"}'},
    {"role": "user", "content": "And in Berlin?"},
]

Call = tuple[str, str]
"""A call as (function name, arguments)."""


def calls_of(message: Any) -> list[Call]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def check_calls(calls: Sequence[Call], finish: str | None, offered: Collection[str]) -> int:
    """Every complete call names an offered function and its arguments validate against that
    function's schema; the last call of an answer cut short by max_tokens may be incomplete
    (its arguments not yet a whole JSON value). How many were complete."""
    complete = 0
    for i, (name, arguments) in enumerate(calls):
        assert name in offered, (name, offered)
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            assert finish == "length" and i == len(calls) - 1, (name, arguments)
            continue
        jsonschema.validate(value, SCHEMAS[name])
        complete += 1
    return complete


def no_markup(text: str | None) -> None:
    for mark in MARKUP:
        assert mark not in (text or ""), text


def sampled(seed: int | None) -> dict[str, Any]:
    """Greedy (seed None) or sampled at temperature 1 with `seed`."""
    return {"temperature": 0} if seed is None else {"temperature": 1.0, "seed": seed}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("choice", ["required", "named"])
def test_one_call_when_parallel_calls_are_off(daemon: Daemon, model: str, choice: str) -> None:
    client = daemon.client()
    ended = 0
    for seed in (None, 1, 2, 3):
        r = client.chat.completions.create(
            model=model,
            messages=ASKED[choice],  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[list-item]
            tool_choice=CHOICES[choice],
            parallel_tool_calls=False,
            max_tokens=MAX,
            **sampled(seed),
        )
        c = r.choices[0]
        calls = calls_of(c.message)
        assert len(calls) == 1, (seed, c)
        assert c.message.content is None, (seed, c)
        assert r.usage is not None
        if c.finish_reason == "length":
            assert r.usage.completion_tokens == MAX
            continue
        assert c.finish_reason == "tool_calls", (seed, c)
        ended += check_calls(calls, c.finish_reason, OFFERED[choice])
        assert c.message.tool_calls and c.message.tool_calls[0].id.startswith("call_")
    assert ended  # not all cut short: the calls above were checked


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("choice", ["required", "named"])
def test_parallel_calls_are_each_valid(daemon: Daemon, model: str, choice: str) -> None:
    client = daemon.client()
    for seed in (None, 1):
        r = client.chat.completions.create(
            model=model,
            messages=ASKED[choice],  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[list-item]
            tool_choice=CHOICES[choice],
            max_tokens=MAX,
            **sampled(seed),
        )
        c = r.choices[0]
        calls = calls_of(c.message)
        assert calls and c.message.content is None, (seed, c)
        assert c.finish_reason in ("tool_calls", "length"), (seed, c)
        assert check_calls(calls, c.finish_reason, OFFERED[choice]) >= 1, (seed, c)
        ids = [call.id for call in c.message.tool_calls or []]
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("model", MODELS)
def test_tool_choice_none_answers_in_text(daemon: Daemon, model: str) -> None:
    r = daemon.client().chat.completions.create(
        model=model,
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    c = r.choices[0]
    assert c.message.tool_calls is None
    assert c.finish_reason in ("stop", "length")
    assert c.message.content and c.message.content.strip()
    no_markup(c.message.content)


def stream_answer(client: openai.OpenAI, **kw: Any) -> tuple[str, list[Call], str | None, Any]:
    """A streamed answer put together: its content, its calls, its finish_reason and usage;
    checking each call's deltas on the way (OpenAI's shape: the first has the call's index,
    id, type and name with empty arguments, the later ones only argument fragments)."""
    content, finish, usage = "", None, None
    calls: dict[int, list[str]] = {}
    ids: list[str] = []
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            assert finish is None, "a chunk after the finish"
            finish = choice.finish_reason
            no_markup(choice.delta.content)
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                assert d.function is not None
                if d.index not in calls:
                    assert d.index == len(calls), d
                    assert d.id and d.id.startswith("call_") and d.type == "function", d
                    assert d.function.name and d.function.arguments == "", d
                    calls[d.index] = [d.function.name, ""]
                    ids.append(d.id)
                else:
                    assert d.id is None and d.type is None and d.function.name is None, d
                    calls[d.index][1] += d.function.arguments or ""
    assert len(set(ids)) == len(ids)
    return content, [(name, args) for name, args in calls.values()], finish, usage


def warm(client: openai.OpenAI, **kw: Any) -> None:
    """Put the prompt in the prefix cache, so that the two requests compared next both find
    it there (a prompt read fresh and one found cached can differ slightly: tests/e2e/api.py
    warm_chat)."""
    client.chat.completions.create(**{**kw, "max_tokens": 1})


@pytest.mark.parametrize("model", MODELS)
def test_auto_calls_are_valid_and_markup_never_in_content(daemon: Daemon, model: str) -> None:
    """ "auto" at temperature 1 over eight seeds, each streamed and not: the model writes
    freely, any call it makes is valid, the stream holds the same content and calls, and
    the markup of the call format never reaches the content. Gemma calls in some seeds (the
    test is not vacuous for it); SmolLM2 answers in text."""
    client = daemon.client()
    body: dict[str, Any] = {"model": model, "messages": FOLLOW_UP, "tools": TOOLS}
    warm(client, **body)
    called = 0
    for seed in range(8):
        kw = {**body, "temperature": 1.0, "seed": seed, "max_tokens": 60}
        r = client.chat.completions.create(**kw)
        c = r.choices[0]
        calls = calls_of(c.message)
        no_markup(c.message.content)
        check_calls(calls, c.finish_reason, SCHEMAS)
        if calls:
            called += 1
            assert c.finish_reason in ("tool_calls", "length"), (seed, c)
        else:
            assert c.finish_reason in ("stop", "length") and c.message.content, (seed, c)
        content, streamed, finish, usage = stream_answer(client, **kw)
        # The whole answer's content leaves out the line break before its calls; the stream
        # had sent it before the call began.
        assert (content.strip() or None if calls else content) == c.message.content
        assert (streamed, finish) == (calls, c.finish_reason)
        assert usage == r.usage
    if model == GEMMA:
        assert called >= 1


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("choice", "parallel", "seed"), [("required", False, 1), ("named", True, None)]
)
def test_streamed_calls_match_the_whole_answer(
    daemon: Daemon, model: str, choice: str, parallel: bool, seed: int | None
) -> None:
    client = daemon.client()
    kw: dict[str, Any] = {
        "model": model,
        "messages": ASKED[choice],
        "tools": TOOLS,
        "tool_choice": CHOICES[choice],
        "parallel_tool_calls": parallel,
        "max_tokens": MAX,
        **sampled(seed),
    }
    warm(client, **kw)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    content, calls, finish, usage = stream_answer(client, **kw)
    assert calls and calls == calls_of(c.message)
    assert content == "" and c.message.content is None
    assert finish == c.finish_reason
    assert finish == "tool_calls" if not parallel else finish in ("tool_calls", "length")
    check_calls(calls, finish, OFFERED[choice])
    assert usage is not None and usage == r.usage


def test_raw_stream_chunks_have_openais_shape(daemon: Daemon) -> None:
    body = {
        "model": GEMMA,
        "messages": ASK_WEATHER,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": MAX,
        "stream": True,
    }
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(line.startswith("data: ") for line in lines)
    deltas = [ch["choices"][0]["delta"] for ch in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    first = deltas[1]["tool_calls"]
    assert len(first) == 1 and set(first[0]) == {"index", "id", "type", "function"}
    assert first[0]["index"] == 0 and first[0]["type"] == "function"
    assert first[0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = ""
    for delta in deltas[2:-1]:
        assert set(delta) == {"tool_calls"}, delta
        (part,) = delta["tool_calls"]
        assert set(part) == {"index", "function"} and part["index"] == 0, part
        assert set(part["function"]) == {"arguments"}, part
        arguments += part["function"]["arguments"]
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_weather"])
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])


@pytest.mark.parametrize(
    "model",
    [
        SMOL,
        pytest.param(
            GEMMA,
            marks=pytest.mark.xfail(
                strict=True,
                reason="Gemma-3-270M (a base model) answers the tool result by writing the "
                "call again; with tool_choice 'none' its text ends at the call's opening (no "
                "markup reaches content), which leaves it no answer",
            ),
        ),
    ],
)
def test_a_round_trip_ends_in_a_text_answer(daemon: Daemon, model: str) -> None:
    """An agent's loop: the model calls, the client runs the tool and sends its result
    back, the model answers in text."""
    client = daemon.client()
    messages: list[Any] = list(ASK_WEATHER)
    r = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=MAX,
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and message.tool_calls
    call = message.tool_calls[0]
    assert check_calls(calls_of(message), "tool_calls", ["get_weather"]) == 1
    messages.append(message.model_dump(exclude_none=True))
    result = {"city": json.loads(call.function.arguments)["city"], "temperature": 18}
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    answer = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_tokens=60,
    )
    c = answer.choices[0]
    assert c.finish_reason in ("stop", "length") and c.message.tool_calls is None
    assert c.message.content and c.message.content.strip()
    no_markup(c.message.content)


class Address(BaseModel):
    street: str = Field(max_length=16)
    city: str = Field(max_length=16)


class CreateOrder(BaseModel):
    """Order a product to be delivered to an address."""

    product: str = Field(max_length=16)
    size: Literal["small", "medium", "large"]
    ship_to: Address


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", [None, 1, 2])
def test_sdk_parse_with_a_pydantic_tool(daemon: Daemon, model: str, seed: int | None) -> None:
    """What `parse(tools=[pydantic_function_tool(Model)])` sends: a strict schema with a
    `$defs` reference and an enum; the SDK reads the arguments back into the model."""
    tool = openai.pydantic_function_tool(CreateOrder)
    assert "$defs" in tool["function"]["parameters"]
    result = daemon.client().chat.completions.parse(
        model=model,
        messages=ASK_ORDER,  # type: ignore[arg-type]
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=MAX,
        **sampled(seed),
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    function = choice.message.tool_calls[0].function
    assert function.name == "CreateOrder"
    assert isinstance(function.parsed_arguments, CreateOrder)
    assert isinstance(function.parsed_arguments.ship_to, Address)


LEGACY = [{"name": "get_weather", "parameters": SCHEMAS["get_weather"]}]


@pytest.mark.parametrize("model", MODELS)
def test_deprecated_functions_answer_with_function_call(daemon: Daemon, model: str) -> None:
    client = daemon.client()
    kw: dict[str, Any] = {
        "model": model,
        "messages": ASK_WEATHER,
        "functions": LEGACY,
        "function_call": {"name": "get_weather"},
        "temperature": 0,
        "max_tokens": MAX,
    }
    warm(client, **kw)
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "function_call"
    assert c.message.tool_calls is None and c.message.content is None
    assert c.message.function_call is not None
    assert c.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(c.message.function_call.arguments), SCHEMAS["get_weather"])
    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            assert not choice.delta.tool_calls and not choice.delta.content
            finish = choice.finish_reason or finish
            if choice.delta.function_call is not None:
                name += choice.delta.function_call.name or ""
                arguments += choice.delta.function_call.arguments or ""
    assert (name, arguments, finish) == ("get_weather", c.message.function_call.arguments, finish)
    assert finish == "function_call"
