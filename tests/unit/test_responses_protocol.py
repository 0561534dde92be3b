"""The Responses request (llmd/protocol/responses.py): what chat request it becomes, and the
400s naming the Responses field for what it cannot be."""

from __future__ import annotations

from typing import Any

import pytest

from llmd.engine.messages import Grammar
from llmd.errors import InvalidRequest
from llmd.protocol.responses import ResponsesRequest, responses_param

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def chat_of(body: dict[str, Any], earlier: list[dict[str, Any]] | None = None) -> Any:
    return ResponsesRequest.parse(body).to_chat(earlier)


def messages_of(body: dict[str, Any], earlier: list[dict[str, Any]] | None = None) -> Any:
    return [m.model_dump(exclude_none=True) for m in chat_of(body, earlier).messages]


def refused(body: dict[str, Any], earlier: list[dict[str, Any]] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        chat_of(body, earlier)
    return caught.value


def test_a_string_is_one_user_message_after_the_instructions() -> None:
    chat = chat_of(
        {
            "model": "smollm2",
            "input": "Hi",
            "instructions": "Be brief.",
            "max_output_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "u1",
        }
    )
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert (chat.model, chat.completion_limit(), chat.temperature, chat.top_p, chat.user) == (
        "smollm2",
        7,
        0.5,
        0.9,
        "u1",
    )
    assert chat.tool_use is None and chat.response_format is None and not chat.stream


def test_items_become_messages_calls_and_tool_results() -> None:
    body = {
        "input": [
            {"role": "developer", "content": "Use tools."},  # no type: a message, as the SDK
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "W"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},  # dropped
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ],
        "tools": [WEATHER],
    }
    assert messages_of(body) == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "W"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": c,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
                for c in ("c1", "c2")
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c2"},
    ]


def test_tools_choice_and_format_become_chats() -> None:
    chat = chat_of(
        {
            "input": "Weather?",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        }
    )
    use = chat.tool_use
    assert use is not None and (use.choice, use.parallel) == ("get_weather", False)
    assert use.functions[0].parameters == WEATHER["parameters"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "A", "schema": schema, "strict": True}
    chat = chat_of({"input": "x", "text": {"format": fmt}})
    assert chat.grammar_asked == Grammar(
        "json_schema",
        '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}',
        param="response_format.json_schema.schema",
    )
    assert chat_of({"input": "x", "text": {"format": {"type": "json_object"}}}).grammar_asked
    assert chat_of({"input": "x", "text": {"format": {"type": "text"}}}).grammar_asked is None


def test_a_previous_conversation_comes_before_the_input_and_its_instructions_do_not() -> None:
    earlier = [
        {
            "id": "msg_a",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "Q1"}],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "c9",
            "name": "get_weather",
            "arguments": "{}",
            "status": "completed",
        },
    ]
    body = {
        "input": [{"type": "function_call_output", "call_id": "c9", "output": "sunny"}],
        "instructions": "New rules.",
        "tools": [WEATHER],
        "previous_response_id": "resp_1",
    }
    assert messages_of(body, earlier) == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "Q1"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c9"},
    ]
    # Without the earlier conversation the output answers no call.
    assert refused(body).param == "input[0].call_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"content": "no role"}]}, "input[0].type"),
        ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "king", "content": "x"}]}, "input[0].role"),
        ({"input": ["text"]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "x"},
                    {"type": "function_call_output", "output": "o"},
                ]
            },
            "input[1].call_id",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "nope", "output": "o"}]},
            "input[0].call_id",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "input[0].name",
        ),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"input": "x", "tools": [WEATHER, {"type": "file_search", "vector_store_ids": []}]},
            "tools[1].type",
        ),
        ({"input": "x", "tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"input": "x", "tools": [{**WEATHER, "name": "bad name"}]}, "tools[0].name"),
        (
            {"input": "x", "tools": [{**WEATHER, "parameters": {"type": "string"}}]},
            "tools[0].parameters",
        ),
        ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        (
            {"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "f"}},
            "tool_choice",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
        ),
        (
            {
                "input": "x",
                "text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}},
            },
            "text.format.name",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "A"}}},
            "text.format.schema",
        ),
        ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "metadata": {"k": 5}}, "metadata.k"),
        ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "previous_response_id": ""}, "previous_response_id"),
    ],
)
def test_a_mistake_is_a_400_naming_the_responses_field(body: dict[str, Any], param: str) -> None:
    error = refused(body)
    assert error.param == param, error.message
    assert error.status == 400 and error.message


def test_fields_that_only_tune_openais_service_are_ignored() -> None:
    chat = chat_of(
        {
            "input": "x",
            "reasoning": {"effort": "low"},
            "include": ["message.output_text.logprobs"],
            "service_tier": "auto",
            "truncation": "auto",
            "prompt_cache_key": "k",
            "safety_identifier": "s",
            "background": False,
            "store": False,
            "stream_options": {"include_obfuscation": False},
        }
    )
    assert [m.content for m in chat.messages] == ["x"]


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("tools[2].function.parameters", "tools[2].parameters"),
        ("tools", "tools"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("messages", "input"),
        ("messages[3].content", "input"),
        ("max_completion_tokens", "max_output_tokens"),
        ("model", "model"),
        (None, None),
    ],
)
def test_chat_parameters_are_named_as_the_responses_fields(
    chat: str | None, responses: str | None
) -> None:
    assert responses_param(chat) == responses


def test_echo_repeats_the_settings_a_response_shows() -> None:
    req = ResponsesRequest.parse(
        {
            "input": "x",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "metadata": {"a": "b"},
            "store": False,
        }
    )
    echo = req.echo()
    assert echo["tools"] == [{**WEATHER, "strict": True}]
    assert echo["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert (echo["metadata"], echo["store"], echo["parallel_tool_calls"]) == (
        {"a": "b"},
        False,
        True,
    )
    assert echo["text"] == {"format": {"type": "text"}}


def test_stored_input_items_have_ids_of_their_own() -> None:
    """A client's id given twice would page input_items' `after` in a circle."""
    said = {"type": "message", "role": "user", "content": "hi", "id": "dup"}
    req = ResponsesRequest.parse({"model": "m", "input": [said, said, {**said, "id": None}]})
    ids = [item["id"] for item in req.stored_input()]
    assert ids[0] == "dup" and len(set(ids)) == 3 and ids[1].startswith("msg_")
