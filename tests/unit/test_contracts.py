"""tests/contracts: OpenAI's schemas accept the bodies and chunks OpenAI sends (text or tool
calls) and reject what the SDK would trip on: a body without choices, a made-up finish_reason,
a tool call without its function's name; openai.json and openai-routes.json are exactly what
extract.py cuts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.contracts import (
    FILE,
    validate,
    validate_chat_stream,
    validate_completion_stream,
    without_recursive_anchor,
)
from tests.contracts.extract import (
    PREFIX,
    ROOTS,
    ROUTES,
    ROUTES_OUT,
    closure,
    component_refs,
    dump,
    refs,
)

CALL: dict[str, Any] = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def chat_body(**message: Any) -> dict[str, Any]:
    finish = "tool_calls" if "tool_calls" in message else "stop"
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764460800,
        "model": "smollm2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None, **message},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1764460800,
        "model": "smollm2",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


def completion_chunk(text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1764460800,
        "model": "gemma3-270m",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def test_a_text_answer_passes() -> None:
    validate("CreateChatCompletionResponse", chat_body())


def test_a_tool_call_answer_passes() -> None:
    validate("CreateChatCompletionResponse", chat_body(content=None, tool_calls=[CALL]))
    validate("ChatCompletionMessageToolCall", CALL)


def test_a_body_without_choices_fails() -> None:
    body = chat_body()
    del body["choices"]
    with pytest.raises(AssertionError, match=r"\$: 'choices' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_a_message_without_refusal_fails() -> None:
    body = chat_body()
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.message: 'refusal' is a required"):
        validate("CreateChatCompletionResponse", body)


def test_a_tool_call_without_a_function_name_fails() -> None:
    call = copy.deepcopy(CALL)
    del call["function"]["name"]
    with pytest.raises(AssertionError, match=r"\$\.function: 'name' is a required property"):
        validate("ChatCompletionMessageToolCall", call)
    # Inside an answer, where it is one of two kinds of call (function or custom).
    with pytest.raises(AssertionError, match=r"tool_calls\[0\]"):
        validate("CreateChatCompletionResponse", chat_body(content=None, tool_calls=[call]))


def test_arguments_must_be_a_json_string_not_an_object() -> None:
    call = copy.deepcopy(CALL)
    call["function"]["arguments"] = {"city": "Paris"}
    with pytest.raises(AssertionError, match=r"\$\.function\.arguments: .* is not of type"):
        validate("ChatCompletionMessageToolCall", call)


def test_a_chat_stream_passes_with_text_and_with_tool_calls() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    text = [
        chunk({"role": "assistant", "content": ""}, usage=None),
        chunk({"content": "Hello"}, usage=None),
        chunk({}, "stop", usage=None),
        {**chunk({}, usage=usage), "choices": []},
    ]
    validate_chat_stream(text)
    first = {"index": 0, "id": "call_abc123", "type": "function"}
    calls = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{**first, "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    validate_chat_stream(calls)


def test_a_chunk_with_a_made_up_finish_reason_fails() -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({}, "done")]
    with pytest.raises(AssertionError, match=r"(?s)chunk 1: .*finish_reason: 'done' is not one of"):
        validate_chat_stream(chunks)


def test_null_is_allowed_only_where_openai_sends_it() -> None:
    # finish_reason and usage say `nullable: true` (OpenAPI 3.0's spelling) in the stream schema.
    validate_chat_stream([chunk({"content": "x"}, None, usage=None)])
    with pytest.raises(AssertionError, match=r"\$\.usage: 'none' is not of type 'object'"):
        validate_chat_stream([chunk({"content": "x"}, None, usage="none")])
    # A body's finish_reason is not nullable.
    body = chat_body()
    body["choices"][0]["finish_reason"] = None
    with pytest.raises(AssertionError, match=r"finish_reason: None is not of type 'string'"):
        validate("CreateChatCompletionResponse", body)


def test_a_tool_call_chunk_needs_its_index() -> None:
    delta = {"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f"}}]}
    with pytest.raises(AssertionError, match=r"tool_calls\[0\]: 'index' is a required property"):
        validate_chat_stream([chunk(delta)])


def test_an_empty_stream_fails() -> None:
    with pytest.raises(AssertionError, match="empty"):
        validate_chat_stream([])


def test_completion_stream_chunks_may_have_a_null_finish_reason() -> None:
    chunks = [completion_chunk("The", None), completion_chunk(" sky", "length")]
    validate_completion_stream(chunks)
    # OpenAI's body schema alone would refuse the first (see tests/contracts/__init__.py).
    with pytest.raises(AssertionError, match="finish_reason: None is not of type 'string'"):
        validate("CreateCompletionResponse", chunks[0])
    with pytest.raises(AssertionError, match="(?s)chunk 1: .*'tool_calls' is not one of"):
        validate_completion_stream([chunks[0], completion_chunk("", "tool_calls")])


def test_an_error_body_needs_param_and_code() -> None:
    error = {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    validate("ErrorResponse", {"error": error})
    del error["param"]
    with pytest.raises(AssertionError, match=r"\$\.error: 'param' is a required property"):
        validate("ErrorResponse", {"error": error})


def test_an_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="ROOTS"):
        validate("CreateChatCompletionRequest", {})


def test_openai_json_is_what_extract_cuts() -> None:
    """No hand edits, no schema missing or left over: the roots' closure is the whole file, and
    every $ref in it points into it."""
    document = json.loads(FILE.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    assert set(ROOTS) <= set(schemas)
    assert closure(schemas, ROOTS) == schemas
    assert {r.removeprefix(PREFIX) for r in refs(schemas)} <= set(schemas)
    Draft202012Validator.check_schema({"$defs": without_recursive_anchor(schemas)})


def test_openai_routes_json_is_what_extract_cuts() -> None:
    """The fuzz suite's description: llmd's routes and nothing else, every operation's schemas
    and responses present, none left over, and written as extract.py writes it."""
    text = ROUTES_OUT.read_text(encoding="utf-8")
    document = json.loads(text)
    assert dump(document) == text
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == set(ROUTES)
    components = document["components"]
    names, responses = component_refs(document["paths"])
    assert set(components["responses"]) == responses
    names |= component_refs(components["responses"])[0]
    assert closure(components["schemas"], tuple(names)) == components["schemas"]
    assert not any("x-oaiMeta" in op for item in document["paths"].values() for op in item.values())
    Draft202012Validator.check_schema({"$defs": without_recursive_anchor(components["schemas"])})
