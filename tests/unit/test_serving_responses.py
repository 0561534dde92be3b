"""POST /v1/responses in-process (tests/unit/app_harness.py): the Response and its stream
events (checked against OpenAI's schemas), calls as function_call items, incomplete answers,
previous_response_id on the stored responses, and an error mid-stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse

from tests.contracts import validate, validate_responses_stream
from tests.unit.app_harness import SMOL, Harness, error_of, json_of, serve, until
from tests.unit.fake_process import FakeProcesses

RESPONSES = "/v1/responses"
CALL = [
    "<tool_call>",
    '\n{"name": "get_weather", ',
    '"arguments": {"city": ',
    '"Paris"}}',
    "\n</tool_call>",
]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


async def events_of(resp: ClientResponse) -> list[dict[str, Any]]:
    """A Responses stream's events, after checking each `event:` line names its data's type
    and the sequence numbers run from 0 without a gap."""
    text = await resp.text()
    assert resp.status == 200, (resp.status, text)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in text.strip().split("\n\n"):
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}", block
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    validate_responses_stream(events)
    return events


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A Response without what differs between two runs (ids, times)."""
    out = {k: v for k, v in body.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [
        {k: v for k, v in item.items() if k not in ("id", "call_id")} for item in body["output"]
    ]
    return out


def test_a_string_input_answered_as_a_response(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = await json_of(
            await h.post(RESPONSES, {"input": "Say hi", "instructions": "Be kind"})
        )
        validate("Response", body)
        assert body["id"].startswith("resp_") and body["object"] == "response"
        assert (body["status"], body["error"], body["incomplete_details"]) == (
            "completed",
            None,
            None,
        )
        (item,) = body["output"]
        assert item["id"].startswith("msg_")
        assert item["content"] == [
            {"type": "output_text", "text": "Hello, world!", "annotations": [], "logprobs": []}
        ]
        assert body["usage"] == {
            "input_tokens": 7,  # the fake counts the prompt's words
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 11,
        }
        assert (body["model"], body["instructions"], body["store"]) == (SMOL, "Be kind", True)
        (req,) = h.submitted()
        assert req.prompt == (
            "<|im_start|>system\nBe kind<|im_end|>\n<|im_start|>user\nSay hi<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        record = await h.record_of(RESPONSES)
        assert (record.endpoint, record.model, record.completion_tokens) == (RESPONSES, SMOL, 4)

    serve(tmp_path, test)


def test_the_stream_is_every_event_in_order_ending_as_the_whole_response(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        events = await events_of(await h.post(RESPONSES, {"input": "Say hi", "stream": True}))
        assert [e["type"] for e in events] == TEXT_EVENTS
        created, final = events[0]["response"], events[-1]["response"]
        assert (created["status"], created["output"]) == ("in_progress", [])
        assert "usage" not in created  # known at the end (OpenAI's schema: never null)
        assert "".join(e["delta"] for e in events if "delta" in e) == "Hello, world!"
        whole = await json_of(await h.post(RESPONSES, {"input": "Say hi"}))
        assert comparable(final) == comparable(whole)
        item_ids = {e["item"]["id"] for e in events if "item" in e}
        item_ids |= {e["item_id"] for e in events if "item_id" in e}
        assert item_ids == {final["output"][0]["id"]}

    serve(tmp_path, test)


def test_calls_are_function_call_items_and_text_before_them_a_message(tmp_path: Path) -> None:
    tokens = ["Let me ", "check.", "\n", *CALL]
    body = {"input": "Weather?", "tools": [WEATHER]}

    async def test(h: Harness) -> None:
        whole = await json_of(await h.post(RESPONSES, body))
        validate("Response", whole)
        message, call = whole["output"]
        assert message["content"][0]["text"] == "Let me check."  # the line break trimmed
        assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
        assert (call["type"], call["name"], call["arguments"], call["status"]) == (
            "function_call",
            "get_weather",
            '{"city": "Paris"}',
            "completed",
        )
        events = await events_of(await h.post(RESPONSES, {**body, "stream": True}))
        types = [e["type"] for e in events]
        assert types[types.index("response.output_item.done") + 1 :] == [
            "response.output_item.added",
            *["response.function_call_arguments.delta"]
            * types.count("response.function_call_arguments.delta"),
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        args = [e for e in events if e["type"].startswith("response.function_call_arguments")]
        assert (
            "".join(e["delta"] for e in args[:-1]) == args[-1]["arguments"] == '{"city": "Paris"}'
        )
        assert all(e["output_index"] == 1 for e in args)
        assert comparable(events[-1]["response"]) == comparable(whole)

    serve(tmp_path, test, processes=FakeProcesses(tokens=tokens))


def test_max_output_tokens_leaves_the_response_incomplete(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = {"input": "Say hi", "max_output_tokens": 2}
        whole = await json_of(await h.post(RESPONSES, body))
        validate("Response", whole)
        assert (whole["status"], whole["incomplete_details"]) == (
            "incomplete",
            {"reason": "max_output_tokens"},
        )
        assert whole["output"][0]["status"] == "incomplete"
        assert whole["output"][0]["content"][0]["text"] == "Hello,"
        events = await events_of(await h.post(RESPONSES, {**body, "stream": True}))
        assert events[-1]["type"] == "response.incomplete"
        assert comparable(events[-1]["response"]) == comparable(whole)

    serve(tmp_path, test)


def test_a_follow_up_continues_the_stored_conversation(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        first = await json_of(await h.post(RESPONSES, {"input": "One", "instructions": "Old"}))
        second = await json_of(
            await h.post(
                RESPONSES,
                {"input": "Two", "previous_response_id": first["id"], "stream": False},
            )
        )
        assert second["previous_response_id"] == first["id"]
        assert second["instructions"] is None
        prompt = h.submitted()[-1].prompt
        assert prompt == (  # the first's instructions are not carried over
            "<|im_start|>user\nOne<|im_end|>\n<|im_start|>assistant\nHello, world!<|im_end|>\n"
            "<|im_start|>user\nTwo<|im_end|>\n<|im_start|>assistant\n"
        )
        # A third turn continues from the second, which holds the first.
        await json_of(await h.post(RESPONSES, {"input": "3", "previous_response_id": second["id"]}))
        assert h.submitted()[-1].prompt.count("Hello, world!") == 2
        # Not stored: a follow-up cannot find it.
        unstored = await json_of(await h.post(RESPONSES, {"input": "x", "store": False}))
        assert unstored["store"] is False
        sent = len(h.submitted())
        resp = await h.post(RESPONSES, {"input": "y", "previous_response_id": unstored["id"]})
        await error_of(
            resp,
            404,
            code="previous_response_not_found",
            param="previous_response_id",
            type_="invalid_request_error",
        )
        assert len(h.submitted()) == sent  # no model was asked

    serve(tmp_path, test)


def test_an_error_mid_stream_is_a_failed_response(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()  # held after admission: the stream is open, nothing generated
        task = asyncio.create_task(h.post(RESPONSES, {"input": "x", "stream": True}))
        await until(lambda: process.num_inflight == 1, "the request admitted")
        resp = await task
        process.crash()
        events = await events_of(resp)
        assert [e["type"] for e in events] == [
            "response.created",
            "response.in_progress",
            "response.failed",
        ]
        failed = events[-1]["response"]
        assert failed["status"] == "failed"
        assert failed["error"] == {
            "code": "server_error",
            "message": f"model '{SMOL}' stopped unexpectedly and is restarting",
        }
        record = await h.record_of(RESPONSES)
        assert (record.status, record.error_code) == (200, "model_crashed")

    serve(tmp_path, test)


def test_engine_errors_name_the_responses_field(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        resp = await h.post(RESPONSES, {"input": "x" * 100_000})
        await error_of(resp, 400, code="context_length_exceeded", param="input")
        resp = await h.post(RESPONSES, {"input": [{"type": "web_search_call"}]})
        await error_of(resp, 400, param="input[0].type")
        assert h.submitted() == []

    serve(tmp_path, test)
