"""One record per HTTP request, and the observers that consume it when the request ends.

Metrics, usage records, access logs and rate limits all need the same facts about a request
(who, which model, tokens, time to first token, status). The serving layer fills one
`RequestRecord`; when the request is over, `record_middleware` hands it to every observer
registered in `app[OBSERVERS]`. Observers run on the event loop and must be quick: anything
slow (SQLite, files) is queued to a thread by the observer itself.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger("llmd.api")

REQUEST_ID_HEADER = "X-Request-Id"
# A client's own id is kept when it is short and printable: it ends up in logs and headers.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# nginx's code for "the client closed the connection before the response was complete".
CLIENT_CLOSED = 499

Observer = Callable[["RequestRecord"], None]
OBSERVERS = web.AppKey("observers", list[Observer])
Finisher = Callable[[web.Request, "RequestRecord"], Awaitable[None]]
FINISHERS = web.AppKey("finishers", list[Finisher])
"""Awaited by `finish_stream` before a stream's final bytes: what must be durable before the
client sees the end (usage records) happens there."""
RECORD = "llmd.record"

current_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "llmd_request_record", default=None
)


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
    record: RequestRecord = request[RECORD]
    return record


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _CLIENT_ID.match(given) else f"req-{uuid.uuid4().hex}"


def _endpoint(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "other"
    canonical = info.route.resource.canonical if info.route.resource else ""
    return canonical or "other"


@web.middleware
async def record_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost middleware: gives the request its id and record, and reports it at the end."""
    record = RequestRecord(
        request_id=_request_id(request),
        method=request.method,
        path=request.path,
        endpoint=_endpoint(request),
        client=request.remote or "",
        started=time.monotonic(),
        started_wall=time.time(),
    )
    request[RECORD] = record
    token = current_record.set(record)
    status = CLIENT_CLOSED
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    finally:
        record.status = record.status or status
        record.finished = record.finished or time.monotonic()
        current_record.reset(token)
        for observer in request.app[OBSERVERS]:
            try:
                observer(record)
            except Exception:  # an observer's bug must not turn a served request into a 500
                log.exception("request observer %r failed", observer)


async def finish_stream(request: web.Request) -> None:
    """Serving calls this when a stream's content is complete, before its final bytes."""
    record = get_record(request)
    record.status = record.status or 200
    record.finished = record.finished or time.monotonic()
    for finisher in request.app.get(FINISHERS, []):
        await finisher(request, record)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries the request id; a signal, as streams send headers early."""
    record = request.get(RECORD)
    if record is not None:
        response.headers.setdefault(REQUEST_ID_HEADER, record.request_id)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def access_log(record: RequestRecord) -> None:
    """One line per request with its facts as fields (llmd.logs renders them in the configured
    format); no prompt or answer text (that is `log_prompts`)."""
    fields: dict[str, object] = {
        "request_id": record.request_id,
        "client": record.client or "-",
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "latency_s": _seconds(record.latency_s),
        "key": record.key_name,
    }
    if record.is_generation:
        fields.update(
            model=record.model,
            stream=record.stream,
            prompt_tokens=record.prompt_tokens,
            cached_tokens=record.cached_tokens,
            completion_tokens=record.completion_tokens,
            queue_s=_seconds(record.queue_wait_s),
            ttft_s=_seconds(record.ttft_s),
            tpot_s=_seconds(record.tpot_s),
        )
    if record.error_code is not None:
        fields["error"] = record.error_code
    logging.getLogger("llmd.access").info("request", extra={"fields": fields})
