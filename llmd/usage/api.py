"""The admin API for usage records and the audit log (admin keys only): bounded pages in
OpenAI's list shape, and CSV exports streamed a chunk at a time (llmd/usage/listing.py).

Every SQLite read runs in a thread, one page or one export chunk per call, so the event loop
serves other requests (`/health`, streams) however large the table is; an export is written
with backpressure, so a slow client holds one chunk, not the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from pathlib import Path

from aiohttp import web
from multidict import MultiMapping

from llmd.errors import APIError, InvalidRequest
from llmd.usage import listing as ls
from llmd.usage.store import parse_time

log = logging.getLogger("llmd.usage")

DATABASE = web.AppKey("usage_database", Path)


def _database(request: web.Request) -> Path:
    path = request.app.get(DATABASE)
    if path is None:
        raise APIError("Usage recording is off (usage.enabled = false).", status=404)
    return path


def _time(query: MultiMapping[str], name: str, end: bool = False) -> float | None:
    if name not in query:
        return None
    try:
        return parse_time(query[name], end=end)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=name) from None


def _integer(query: MultiMapping[str], name: str) -> int | None:
    if name not in query:
        return None
    value = query[name]
    if not re.fullmatch(r"-?[0-9]{1,20}", value):  # int() would take " 7", "1_0" and "７"
        raise InvalidRequest(
            f"Invalid '{name}': expected an integer, but got {query[name]!r} instead.",
            param=name,
            code="invalid_type",
        )
    return int(value)


def _paging(query: MultiMapping[str]) -> ls.Paging:
    return ls.Paging(
        limit=_integer(query, "limit"),
        after=_integer(query, "after"),
        before=_integer(query, "before"),
        order=query.get("order", "desc"),
    )


def _csv(query: MultiMapping[str]) -> bool:
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest(f"Invalid 'format': use json or csv, not {fmt!r}.", param="format")
    return fmt == "csv"


def _invalid(exc: ls.ListingError) -> InvalidRequest:
    return InvalidRequest(str(exc), param=exc.param, code=exc.code)


async def _export(request: web.Request, chunks: ls.Chunks, name: str) -> web.StreamResponse:
    """Stream an export: chunks are read in a thread one at a time; an error in the first one
    (a bad cursor, a bad group) is still a 400, later ones can only cut the download short."""
    try:
        chunk = await asyncio.to_thread(next, chunks, None)
    except ls.ListingError as exc:
        raise _invalid(exc) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}.csv"',
        }
    )
    await response.prepare(request)
    try:
        while chunk is not None:
            await response.write(chunk)  # waits while the client is behind: one chunk held
            chunk = await asyncio.to_thread(next, chunks, None)
    except (sqlite3.Error, OSError) as exc:
        if isinstance(exc, ConnectionError):
            raise  # the client went away: nothing to tell it
        # The status went out with the headers: all that is left is to end the connection
        # without the last chunk, so the client sees a broken download, not a short file.
        log.error("usage export cut short after its first rows: %s", exc)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        # Closes its connection when it ended early. A read still running in its thread (the
        # handler cancelled) cannot be closed: the generator closes itself once dropped.
        with contextlib.suppress(ValueError):
            await asyncio.to_thread(chunks.close)
    await response.write_eof()
    return response


async def usage(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/usage?key=&model=&since=&until=&group_by=day,key,model&limit=&after=&before=
    &order=desc|asc&format=csv"""
    q = request.query
    query = ls.UsageQuery(
        key=q.get("key"),
        model=q.get("model"),
        since=_time(q, "since"),
        until=_time(q, "until", end=True),
        group_by=[g for g in q.get("group_by", "").split(",") if g],
    )
    paging = _paging(q)
    path = _database(request)
    if _csv(q):
        if query.group_by:
            chunks = ls.export_totals_csv(path, query, paging)
        else:
            chunks = ls.export_csv(path, ls.USAGE, query.filters(), paging)
        return await _export(request, chunks, "usage")
    try:
        if query.group_by:
            page = await asyncio.to_thread(ls.totals, path, query, paging)
        else:
            page = await asyncio.to_thread(ls.page, path, ls.USAGE, query.filters(), paging)
    except ls.ListingError as exc:
        raise _invalid(exc) from None
    return web.json_response(page.body())


async def audit(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/audit?since=&until=&actor=&limit=&after=&before=&order=desc|asc&format=csv"""
    q = request.query
    query = ls.AuditQuery(
        since=_time(q, "since"), until=_time(q, "until", end=True), actor=q.get("actor")
    )
    paging = _paging(q)
    path = _database(request)
    if _csv(q):
        chunks = ls.export_csv(path, ls.AUDIT, query.filters(), paging)
        return await _export(request, chunks, "audit")
    try:
        page = await asyncio.to_thread(ls.page, path, ls.AUDIT, query.filters(), paging)
    except ls.ListingError as exc:
        raise _invalid(exc) from None
    return web.json_response(page.body())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/usage", usage)
    app.router.add_get("/api/v1/audit", audit)
