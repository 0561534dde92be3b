"""The HTTP side of the per-request record: the middleware that opens and reports it.

`record_middleware` gives every request its id and `RequestRecord` (llmd/record.py) and, when
the request ends, hands the record to the observers in `app[OBSERVERS]`; `finish_stream` runs
the finishers before a stream's final bytes; `on_prepare` puts the request id on every response
(and the response cache's part, `x-llmd-cache`, on those it had one in).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from aiohttp import web

from llmd.record import OBSERVERS, RECORD, RequestRecord, current_record, find_record

log = logging.getLogger("llmd.api")

REQUEST_ID_HEADER = "X-Request-Id"
# A client's own id is kept when it is short and printable: it ends up in logs and headers.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# nginx's code for "the client closed the connection before the response was complete".
CLIENT_CLOSED = 499


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


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response carries the request id; a signal, as streams send headers early. The
    anthropic SDK reads it from `request-id` (`message._request_id`): sent there too."""
    record = find_record(request)
    if record is not None:
        response.headers.setdefault(REQUEST_ID_HEADER, record.request_id)
        response.headers.setdefault("request-id", record.request_id)
        if record.cache is not None and response.status < 400:
            response.headers["x-llmd-cache"] = record.cache
