"""Tool calling end to end, what a client sends: bad tools and tool messages are a 400 naming
the parameter and harm nothing (the same model process serves the next call); a chat template
that knows tools (Qwen 2.5's, given as an override on SmolLM2) gets them; LangChain's agent
loop, where it is installed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import httpx2 as httpx
import jsonschema
import pytest
from pydantic import SecretStr

from tests.e2e.api import SMOL, assert_error, model_health
from tests.e2e.conftest import ROOT
from tests.e2e.conftest import SMOL as SMOL_FILE

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
PING = {"type": "function", "function": {"name": "ping", "parameters": PING_SCHEMA}}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
    ],
}


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


BAD: list[tuple[dict[str, Any], str]] = [
    ({"tools": PING}, "tools"),  # not a list
    (
        {"tools": [{"type": "function", "function": {"parameters": PING_SCHEMA}}]},
        "tools[0].function.name",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
        "tools[0].function.name",
    ),
    ({"tools": [tool({"type": "string"})]}, "tools[0].function.parameters"),
    ({"tools": [PING, PING]}, "tools[1]"),
    # Schemas only llama.cpp's converter (in the model process) finds it cannot follow, with
    # "required" and with "auto" (a lazy grammar).
    (
        {
            "tools": [tool({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})],
            "tool_choice": "required",
        },
        "tools",
    ),
    ({"tools": [tool({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})]}, "tools"),
    (
        {
            "tools": [
                tool(
                    {
                        "type": "object",
                        "properties": {"a": {"type": "string", "pattern": "^(?=x)y$"}},
                    }
                )
            ]
        },
        "tools",
    ),
    ({"tools": [tool({"type": "object", "properties": {"a": {"type": "nonsense"}}})]}, "tools"),
    # Deeper than llama.cpp's grammar parser survives: it would kill the model process.
    (
        {
            "tools": [
                tool(
                    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 20000}}}
                )
            ]
        },
        "tools",
    ),
    (
        {"tools": [PING], "tool_choice": {"type": "function", "function": {"name": "pong"}}},
        "tool_choice",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [PING], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [*ASK, CALLED, {"role": "tool", "content": "pong"}]}, "messages[2].tool_call_id"),
    (
        {"messages": [*ASK, CALLED, {"role": "tool", "tool_call_id": "call_2", "content": "pong"}]},
        "messages[2].tool_call_id",
    ),
    (
        {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "pong"}]},
        "messages[1].tool_call_id",
    ),
    ({"tools": [PING], "grammar": 'root ::= "yes"'}, "grammar"),
    ({"functions": [{"name": "ping"}], "function_call": {"name": "pong"}}, "function_call"),
    ({"tools": [PING], "functions": [{"name": "ping"}]}, "functions"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_bad_tool_requests_are_400_and_harm_nothing(
    daemon: Daemon, extra: dict[str, Any], param: str
) -> None:
    before = model_health(daemon, SMOL)
    body = {"model": SMOL, "messages": ASK, "max_tokens": 4, **extra}
    resp = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
    assert_error(resp, 400, param=param)
    assert resp.json()["error"]["type"] == "invalid_request_error"
    # The same model process serves the next call.
    r = daemon.client().chat.completions.create(
        model=SMOL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[PING],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=40,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls
    jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), PING_SCHEMA)
    after = model_health(daemon, SMOL)
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])


WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_SCHEMA,
    },
}


def test_a_tool_aware_template_override_gets_the_tools(make_daemon: Callable[..., Daemon]) -> None:
    """Qwen 2.5's template, given to SmolLM2 as its chat_template: the tools, the earlier
    call and its result reach the model through that template (the prompt log shows Qwen's
    own words), not through llmd's system prompt; the calls are held to the schema."""
    template = ROOT / "tests" / "fixtures" / "qwen2.5-tools.jinja"
    d = make_daemon(
        f"""
[server]
log_prompts = true

[engine]
ctx_per_seq = 1024
parallel = 2

[models.qwen-smol]
path = "{SMOL_FILE}"
chat_template = "{template}"
"""
    )
    client = d.client()
    for seed in (None, 1, 2):
        r = client.chat.completions.create(
            model="qwen-smol",
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=60,
            **({"temperature": 0} if seed is None else {"temperature": 1.0, "seed": seed}),
        )
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        assert c.message.tool_calls and len(c.message.tool_calls) == 1
        call = c.message.tool_calls[0].function
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "18 C, cloudy"},
    ]
    answer = client.chat.completions.create(
        model="qwen-smol",
        messages=messages,
        tools=[WEATHER],
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type, list-item]
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    log = d.logs()
    assert "You are Qwen, created by Alibaba Cloud" in log
    assert "You may call one or more functions to assist with the user query." in log
    assert '<tools>\\n{"type": "function", "function": {"name": "get_weather"' in log
    # The earlier call (written by Qwen's template from its arguments object) and its result.
    assert '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"' in log
    assert "<|im_start|>user\\n<tool_response>\\n18 C, cloudy\\n</tool_response>" in log
    # llmd's own tool prompt, for templates that do not know tools, was not used.
    assert "You can call functions to help with the request" not in log


def test_a_langchain_agent_loop(daemon: Daemon) -> None:
    """LangChain's ChatOpenAI with a Python function bound as a tool: the model calls it, the
    loop runs it and sends its result back, the model answers in text."""
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
    from langchain_core.tools import tool as as_tool
    from langchain_openai import ChatOpenAI

    ran: list[dict[str, Any]] = []

    @as_tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The current weather in a city."""
        ran.append({"city": city, "unit": unit})
        return f"18 degrees {unit}, cloudy"

    llm = ChatOpenAI(
        base_url=daemon.url + "/v1",
        api_key=SecretStr("unused"),
        model=SMOL,
        temperature=0,
        max_completion_tokens=60,
        max_retries=0,
    )
    messages: list[BaseMessage] = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=False).invoke(
        messages
    )
    assert isinstance(ai, AIMessage) and len(ai.tool_calls) == 1, ai
    assert ai.response_metadata["finish_reason"] == "tool_calls"
    messages.append(ai)
    for call in ai.tool_calls:
        messages.append(get_weather.invoke(call))
    assert len(ran) == 1 and ran[0]["unit"] in ("celsius", "fahrenheit")
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert isinstance(answer, AIMessage) and not answer.tool_calls, answer
    assert isinstance(answer.content, str) and answer.content.strip()
    assert "<tool_call>" not in answer.content and "</tool_call>" not in answer.content


def test_auto_survives_a_token_that_runs_past_the_opening(
    make_daemon: Callable[..., Daemon],
) -> None:
    """With "auto" the model writes freely until the call's opening. SmolLM2, shown an answer
    it gave before, repeats it greedily: '<tool_call>. Done', where '>.' is one token that
    ends the opening and goes on with '.', which no call may. That must not kill the model
    process, as llama.cpp's lazy grammar did ("Unexpected empty grammar stack after accepting
    piece: >."). Its own daemon: the shared one's tests check that no model ever restarted."""
    d = make_daemon(f'[models.smollm2]\npath = "{SMOL_FILE}"\n')
    before = model_health(d, SMOL)
    said = "<tool_call>. Done"
    messages = [{"role": "user", "content": "Say it."}]
    for _ in range(2):
        messages += [{"role": "assistant", "content": said}, {"role": "user", "content": "Again."}]
    resp = httpx.post(
        d.url + "/v1/chat/completions",
        json={
            "model": SMOL,
            "messages": messages,
            "tools": [PING],
            "temperature": 0,
            "max_tokens": 20,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    content = resp.json()["choices"][0]["message"]["content"] or ""
    assert "<tool_call>" not in content and "</tool_call>" not in content
    after = model_health(d, SMOL)
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])
