"""Server-sent events: the one writer every streaming endpoint uses.

A stream is opened (headers sent), carries events (`data:` lines, with an `event:` line for
APIs that name their events), and ends exactly once: normally, or with an error, which then
travels in the stream itself since the status line is gone. Before the last bytes, the
request's record is finished (`finish_stream`): usage is counted by the time a client reads
the end of the stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from llmd.errors import APIError
from llmd.record import finish_stream, get_record

log = logging.getLogger("llmd.api")

Payload = dict[str, Any] | str
"""An event's data: JSON, or text as it is (OpenAI's `[DONE]`)."""


class EventStream:
    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response

    @classmethod
    async def open(cls, request: web.Request) -> EventStream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        return cls(request, response)

    async def send(self, data: Payload, event: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        head = f"event: {event}\n" if event is not None else ""
        await self.response.write(f"{head}data: {text}\n\n".encode("utf-8", "replace"))

    async def close(self, data: Payload, event: str | None = None) -> web.StreamResponse:
        """The last event, once the request's record is finished."""
        await finish_stream(self.request)
        await self.send(data, event)
        await self.response.write_eof()
        return self.response

    async def done(self, usage_chunk: dict[str, Any] | None = None) -> web.StreamResponse:
        """OpenAI's ending: the usage chunk if the client asked for one, then `[DONE]`."""
        if usage_chunk is not None:
            await self.send(usage_chunk)
        return await self.close("[DONE]")

    async def fail(
        self, exc: APIError, event: str | None = None, body: Payload | None = None
    ) -> web.StreamResponse:
        """Headers are gone already: report the failure in the stream, as OpenAI does (or in
        the API's own `body` for it: Anthropic's `error` event)."""
        get_record(self.request).error_code = exc.code or exc.type
        log.warning("stream ended by error: %s", exc.message)
        return await self.close(exc.body() if body is None else body, event)
