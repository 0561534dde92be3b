"""POST /v1/messages and /v1/messages/count_tokens in-process (tests/unit/app_harness.py): the
translation onto a chat request, the message and its SSE events (checked against the official
`anthropic` SDK's types), count_tokens, and errors in Anthropic's shape."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from pydantic import TypeAdapter

from llmd.auth.keys import add_key
from llmd.errors import InvalidRequest
from llmd.protocol.anthropic import CountTokensRequest, MessagesRequest, renamed
from llmd.serving import messages as serving_messages
from tests.unit.app_harness import SMOL, Harness, json_of, keys_file, serve, until
from tests.unit.fake_process import FakeProcesses

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
HI = [{"role": "user", "content": "Say hi to me"}]
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# What a model writes to call get_weather, as the fake engine's tokens.
CALL = ["Let me look.", "\n", "<tool_call>", '\n{"name": "get_weather", "arguments": ']
CALL += ['{"city": ', '"Paris"}', "}\n</tool_call>"]


def body_of(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": SMOL, "max_tokens": 8, "messages": HI}
    body.update(kw)
    return body


async def events_of(resp: Any) -> list[tuple[str, dict[str, Any]]]:
    """A stream's (event name, data) pairs; each name matches its data's type."""
    text = await resp.text()
    assert resp.status == 200, (resp.status, text)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for chunk in text.strip().split("\n\n"):
        name_line, data_line = chunk.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name, chunk
        out.append((name, data))
    return out


async def anthropic_error_of(resp: Any, status: int, type_: str, starts: str = "") -> str:
    body = await json_of(resp, status)
    assert set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error" and body["request_id"] == resp.headers["X-Request-Id"]
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == type_, body
    message: str = body["error"]["message"]
    assert message.startswith(starts), message
    return message


# -- translation ------------------------------------------------------------------------------


def test_a_conversation_with_tools_becomes_the_chat_request_it_means() -> None:
    req = MessagesRequest.parse(
        {
            "model": "smol",
            "max_tokens": 50,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "user", "content": [{"type": "text", "text": "Please."}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "x"},
                        {"type": "text", "text": "Looking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "22 C"}],
                        },
                        {"type": "text", "text": "And so?"},
                    ],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_k": 5,
            "metadata": {"user_id": "u-1"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "service_tier": "auto",
        }
    )
    chat = req.to_chat()
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Weather in Paris?\n\nPlease."),
        ("assistant", "Looking."),
        ("tool", "22 C"),
        ("user", "And so?"),
    ]
    call = chat.messages[2].tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert chat.messages[3].tool_call_id == "toolu_1"
    assert chat.tool_use is not None
    assert (chat.tool_use.choice, chat.tool_use.parallel) == ("required", False)
    assert chat.tool_use.functions[0].parameters == WEATHER["input_schema"]
    assert (chat.max_tokens, chat.stop, chat.temperature, chat.top_k, chat.user) == (
        50,
        ["END"],
        0.5,
        5,
        "u-1",
    )


def test_tool_choice_and_output_format_translate() -> None:
    def chat(**kw: Any) -> Any:
        return MessagesRequest.parse(body_of(tools=[WEATHER], **kw)).to_chat()

    assert chat().tool_use.choice == "auto"
    assert chat(tool_choice={"type": "none"}).tool_use.choice == "none"
    named = chat(tool_choice={"type": "tool", "name": "get_weather"}).tool_use
    assert (named.choice, named.parallel) == ("get_weather", True)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = MessagesRequest.parse(
        body_of(output_config={"format": {"type": "json_schema", "schema": schema}})
    ).to_chat()
    assert fmt.response_format is not None and fmt.response_format.json_schema is not None
    assert fmt.response_format.json_schema.schema_ == schema
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}
    errored = MessagesRequest.parse(
        body_of(
            messages=[
                *HI,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}
                    ],
                },
                {"role": "user", "content": [result]},
            ]
        )
    ).to_chat()
    assert errored.messages[-1].content == "Error: boom"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": None}, "max_tokens: "),
        ({"max_tokens": 0}, "max_tokens: "),
        ({"temperature": 1.5}, "temperature: "),
        ({"messages": []}, "messages: "),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content: "),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role: "),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages.0.content.0.type: 'image' blocks are not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text: ",
        ),
        (  # a type that is no string (unhashable, once a 500)
            {"messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]},
            "messages.0.content.0.type: a block without a type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": {}, "text": "x"}]}]},
            "messages.0.content.0.type: ",
        ),
        (
            {"messages": [*HI, {"role": "assistant", "content": "The answer is"}]},
            "messages: the last message must be a user message",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}],
                    }
                ]
            },
            "messages.0.content.0.tool_use_id: ",
        ),
        (
            {
                "messages": [
                    *HI,
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    *HI,
                ]
            },
            "messages: tool_use ids were found without tool_result blocks",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type: "),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, "tools.0.input_schema"),
        ({"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]}, "tools.0.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice.type: "),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "x"}}, "tool_choice.name"),
        ({"stop_sequences": [""]}, "stop_sequences.0: "),
        ({"stop_sequences": ["s"] * 17}, "stop_sequences: "),
        ({"system": [{"type": "image"}]}, "system"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(change: dict[str, Any], field: str) -> None:
    body = body_of(**change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        MessagesRequest.parse(body)
    assert caught.value.message.startswith(field), caught.value.message
    assert caught.value.param and caught.value.message.startswith(caught.value.param)


def test_count_tokens_needs_no_max_tokens() -> None:
    assert CountTokensRequest.parse({"model": SMOL, "messages": HI}).to_chat().max_tokens is None


# -- through the app --------------------------------------------------------------------------


def test_a_message_in_anthropics_shape(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        resp = await h.post(MESSAGES, body_of(), headers={"anthropic-version": "2023-06-01"})
        body = await json_of(resp)
        message = Message.model_validate(body)
        assert message.id.startswith("msg_") and message.model == SMOL
        assert body["content"] == [{"type": "text", "text": "Hello, world!"}]
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
        prompt_words = len(h.submitted()[0].prompt.split())  # type: ignore[union-attr]
        assert body["usage"] == {
            "input_tokens": prompt_words,
            "output_tokens": 4,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        }
        record = await h.record_of(MESSAGES)
        assert (record.endpoint, record.model, record.completion_tokens) == (MESSAGES, SMOL, 4)

        cut = await json_of(await h.post(MESSAGES, body_of(max_tokens=2)))
        assert (cut["stop_reason"], cut["content"][0]["text"]) == ("max_tokens", "Hello,")

    serve(tmp_path, test)


def test_count_tokens_is_the_prompt_that_would_run(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = body_of(tools=[WEATHER], system="Be brief.")
        count = await json_of(await h.post(COUNT, {k: body[k] for k in body if k != "max_tokens"}))
        MessageTokensCount.model_validate(count)
        created = await json_of(await h.post(MESSAGES, body))
        usage = created["usage"]
        assert count["input_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]
        counted, ran = h.submitted()
        assert counted.count_only and not ran.count_only and counted.prompt == ran.prompt
        assert h.process().num_inflight == 0

    serve(tmp_path, test)


def test_a_stream_is_anthropics_events_and_assembles_to_the_message(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        events = await events_of(await h.post(MESSAGES, body_of(stream=True)))
        for name, data in events:
            if name != "ping":  # not an SDK type: the SDK skips pings by their name
                EVENTS.validate_python(data)
        names = [name for name, _ in events]
        assert names == [
            "message_start",
            "ping",
            "content_block_start",
            *["content_block_delta"] * 4,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        start = events[0][1]["message"]
        assert start["content"] == [] and start["stop_reason"] is None
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "Hello, world!"
        delta = events[-2][1]
        assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
        assert delta["usage"]["output_tokens"] == 4
        record = await h.record_of(MESSAGES)
        assert (record.stream, record.completion_tokens) == (True, 4)

    serve(tmp_path, test)


def test_tool_use_streamed_and_whole_are_the_same_blocks(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = body_of(tools=[WEATHER], max_tokens=20)
        whole = await json_of(await h.post(MESSAGES, body))
        assert whole["stop_reason"] == "tool_use"
        text, call = whole["content"]
        assert text == {"type": "text", "text": "Let me look."}
        assert call["id"].startswith("toolu_")
        assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})

        events = await events_of(await h.post(MESSAGES, {**body, "stream": True}))
        blocks: list[dict[str, Any]] = []
        for name, data in events:
            if name != "ping":
                EVENTS.validate_python(data)
            if name == "content_block_start":
                assert data["index"] == len(blocks)
                blocks.append(dict(data["content_block"]))
            elif name == "content_block_delta":
                block, delta = blocks[data["index"]], data["delta"]
                if delta["type"] == "text_delta":
                    block["text"] += delta["text"]
                else:
                    assert delta["type"] == "input_json_delta"
                    block["json"] = block.get("json", "") + delta["partial_json"]
        blocks[1]["input"] = json.loads(blocks[1].pop("json"))
        blocks[1]["id"] = call["id"]
        assert blocks == whole["content"]
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    serve(tmp_path, test, processes=FakeProcesses(tokens=CALL))


def test_errors_are_in_anthropics_shape(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await anthropic_error_of(
            await h.post(MESSAGES, {"model": SMOL, "messages": HI}),
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        )
        await anthropic_error_of(
            await h.post(MESSAGES, content=b"{not json"), 400, "invalid_request_error"
        )
        await anthropic_error_of(
            await h.post(MESSAGES, body_of(model="no-such-model")), 404, "not_found_error", "model"
        )
        await anthropic_error_of(
            await h.post(COUNT, {"model": "no-such-model", "messages": HI}), 404, "not_found_error"
        )
        await anthropic_error_of(await h.get(MESSAGES), 405, "invalid_request_error")
        await anthropic_error_of(
            await h.post("/v1/messages/nope", body_of()), 404, "not_found_error"
        )
        # The model is busy: llmd's 503 is Anthropic's 529, Retry-After kept.
        process = h.process()
        process.gate.clear()  # the only slot stays taken
        held = asyncio.create_task(h.post(MESSAGES, body_of(stream=True)))
        await until(lambda: process.num_inflight == 1, "the slot taken")
        for path in (MESSAGES, COUNT):
            resp = await h.post(path, body_of())
            await anthropic_error_of(resp, 529, "overloaded_error", f"model '{SMOL}' is busy")
            assert int(resp.headers["Retry-After"]) >= 1
        process.gate.set()
        assert (await events_of(await held))[-1][0] == "message_stop"
        # OpenAI's routes keep OpenAI's shape.
        body = await json_of(await h.post("/v1/chat/completions", {"messages": []}), 400)
        assert set(body) == {"error"}

    serve(tmp_path, test, config={f"models.{SMOL}.parallel": 1, "server.max_queue": 0})


def test_a_bad_x_api_key_is_anthropics_401(tmp_path: Path) -> None:
    secret = add_key(keys_file(tmp_path), "app")[1]

    async def test(h: Harness) -> None:
        await anthropic_error_of(
            await h.post(MESSAGES, body_of(), headers={"x-api-key": "sk-wrong"}),
            401,
            "authentication_error",
        )
        resp = await h.post(MESSAGES, body_of(), headers={"x-api-key": secret})
        assert (await json_of(resp))["type"] == "message"

    serve(tmp_path, test)


def test_pings_keep_a_stream_alive_until_the_first_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving_messages, "PING_S", 0.01)

    async def test(h: Harness) -> None:
        h.process().gate.clear()  # the prompt is "still being read"
        resp = await h.post(MESSAGES, body_of(stream=True))
        seen: list[str] = []
        while seen.count("event: ping") < 3:
            line = (await resp.content.readline()).decode().strip()
            if line.startswith("event: "):
                seen.append(line)
        h.process().gate.set()
        rest = [n for n, _ in await events_of_rest(resp)]
        assert seen == ["event: message_start", *["event: ping"] * 3]
        assert rest[0] == "content_block_start" and rest[-1] == "message_stop"

    serve(tmp_path, test)


async def events_of_rest(resp: Any) -> list[tuple[str, dict[str, Any]]]:
    """The events still to come on a stream read part way (from an event's start)."""
    text = (await resp.content.read()).decode().strip()
    chunks = [c for c in text.split("\n\n") if c.startswith("event: ") and "ping" not in c]
    return [
        (c.split("\n")[0].removeprefix("event: "), json.loads(c.split("\n")[1][6:])) for c in chunks
    ]


def test_a_chat_requests_400_names_this_apis_field() -> None:
    schema_error = InvalidRequest("bad schema", param="response_format.json_schema.schema")
    assert renamed(schema_error).message == "output_config.format.schema: bad schema"
    assert renamed(InvalidRequest("too many", param="stop")).param == "stop_sequences"
    assert renamed(InvalidRequest("x", param="tools[0].function.parameters")).param == "tools"
    long = renamed(InvalidRequest("too long", param="messages", code="context_length_exceeded"))
    assert (long.message, long.code) == ("messages: too long", "context_length_exceeded")
