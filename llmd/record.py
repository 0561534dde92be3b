"""One record per HTTP request: what it did, and the hooks that consume it when it ends.

Metrics, usage records, access logs, rate limits and log lines all need the same facts about a
request (who, which model, tokens, time to first token, status). The serving layer fills one
`RequestRecord`; the server's `record_middleware` (llmd/server/accounting.py) creates it, makes
it the `current_record` of the request's task and, when the request is over, hands it to every
observer registered in `app[OBSERVERS]`. Observers run on the event loop and must be quick:
anything slow (SQLite, files) is queued to a thread by the observer itself.

This module is the ground floor the readers share: it imports nothing of llmd.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Observer = Callable[["RequestRecord"], None]
OBSERVERS = web.AppKey("observers", list[Observer])
"""Called with the record once its request is over (the response sent, or the client gone)."""
Finisher = Callable[[web.Request, "RequestRecord"], Awaitable[None]]
FINISHERS = web.AppKey("finishers", list[Finisher])
"""Awaited by `finish_stream` before a stream's final bytes: what must be durable before the
client sees the end (usage records) happens there."""
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("llmd_record")
"""The key of the record in its `web.Request` (absent before `record_middleware` ran)."""

current_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "llmd_request_record", default=None
)
"""The record of the request the running task serves (log lines are stamped from it)."""


@dataclass
class RequestRecord:
    """What one HTTP request did. Times are `time.monotonic()` values unless named `_wall`."""

    request_id: str
    method: str
    path: str
    endpoint: str
    """The route's pattern (`/v1/chat/completions`), or `other`: bounded, fit for labels."""
    client: str
    started: float
    started_wall: float
    key_name: str | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    error_code: str | None = None
    """The `code` of the OpenAI error that ended the request, in the body or in the stream."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    admitted: float | None = None
    """When the engine gave the request its slots (queue wait = admitted - started)."""
    first_token: float | None = None
    finished: float | None = None
    weight: int = 1
    """Fair-share weight of the request's key (the scheduler admits round-robin by key)."""
    prompt_text: str | None = None
    """The prompt, kept only when content logging is on for the request (usage records)."""
    answer_parts: list[str] | None = None
    """Set to [] when content logging is on: serving appends the answer text to it."""
    cache: str | None = None
    """The response cache's part: "hit" (answered from it), "miss" (computed, and kept if
    the client allows), "bypass" (not determined by the request, or the client said not to
    read it); None for requests it has no part in. Sent as `x-llmd-cache`."""
    cache_read: bool = True
    cache_write: bool = True
    """The client's Cache-Control: `no-cache` forbids reading an answer, `no-store` keeping it."""

    @property
    def is_generation(self) -> bool:
        return self.model is not None

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.started

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def latency_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (undefined for fewer than 2 tokens)."""
        if self.first_token is None or self.finished is None or self.completion_tokens < 2:
            return None
        return (self.finished - self.first_token) / (self.completion_tokens - 1)


def get_record(request: web.Request) -> RequestRecord:
    """The request's record (every request has one once `record_middleware` ran)."""
    record: RequestRecord = request[RECORD]
    return record


def find_record(request: web.Request) -> RequestRecord | None:
    """The request's record, or None for one the record middleware has not seen."""
    record: RequestRecord | None = request.get(RECORD)
    return record


async def finish_stream(request: web.Request) -> None:
    """Serving calls this when a stream's content is complete, before its final bytes."""
    record = get_record(request)
    record.status = record.status or 200
    record.finished = record.finished or time.monotonic()
    for finisher in request.app.get(FINISHERS, []):
        await finisher(request, record)
