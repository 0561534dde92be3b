"""The one SSE writer (llmd/serving/sse.py): OpenAI's `data:` lines and `[DONE]`, and the named
events (`event:` lines) that the Responses and Anthropic Messages streams are made of."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmd.errors import APIError
from llmd.record import FINISHERS, RECORD, RequestRecord
from llmd.serving.sse import EventStream


def _stream(write: str) -> tuple[str, list[str]]:
    """(the response body, what the finishers saw) of a stream written one of three ways."""
    finished: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        request[RECORD] = RequestRecord("r", "POST", "/", "/", "", 0.0, 0.0)
        stream = await EventStream.open(request)
        if write == "openai":
            await stream.send({"text": "héllo"})
            return await stream.done({"usage": 1})
        if write == "named":
            await stream.send({"type": "message_start"}, event="message_start")
            return await stream.close({"type": "message_stop"}, event="message_stop")
        return await stream.fail(APIError("broke", code="model_crashed", status=503), "error")

    async def finisher(request: web.Request, record: RequestRecord) -> None:
        finished.append(f"{record.status}:{record.error_code}")

    async def run() -> str:
        app = web.Application()
        app[FINISHERS] = [finisher]
        app.router.add_post("/", handler)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/")
            assert resp.headers["Content-Type"] == "text/event-stream"
            return await resp.text()

    return asyncio.run(run()), finished


def test_openai_stream_ends_with_usage_then_done_after_the_finishers() -> None:
    body, finished = _stream("openai")
    assert body == 'data: {"text": "héllo"}\n\ndata: {"usage": 1}\n\ndata: [DONE]\n\n'
    assert finished == ["200:None"]


def test_named_events_carry_an_event_line() -> None:
    body, _ = _stream("named")
    assert body == (
        'event: message_start\ndata: {"type": "message_start"}\n\n'
        'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )


def test_a_failure_is_the_last_event_and_recorded() -> None:
    body, finished = _stream("fail")
    assert body.startswith("event: error\ndata: {")
    assert '"code": "model_crashed"' in body and "[DONE]" not in body
    assert finished == ["200:model_crashed"]
