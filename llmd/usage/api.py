"""The admin API for usage records and the audit log (admin keys only)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from llmd.errors import APIError, InvalidRequest
from llmd.usage import store as s

DATABASE = web.AppKey("usage_database", Path)


def _query(request: web.Request) -> s.UsageQuery:
    q = request.query
    try:
        return s.UsageQuery(
            key=q.get("key"),
            model=q.get("model"),
            since=s.parse_time(q["since"]) if "since" in q else None,
            until=s.parse_time(q["until"], end=True) if "until" in q else None,
            group_by=[g for g in q.get("group_by", "").split(",") if g],
            limit=int(q.get("limit", "1000")),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _database(request: web.Request) -> Path:
    path = request.app.get(DATABASE)
    if path is None:
        raise APIError("Usage recording is off (usage.enabled = false).", status=404)
    return path


async def usage(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/usage?key=&model=&since=&until=&group_by=day,key,model&format=csv&limit="""
    q = _query(request)
    try:
        rows = await asyncio.to_thread(s.query_usage, _database(request), q)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="group_by") from None
    if request.query.get("format") == "csv":
        return web.Response(
            text=s.to_csv(rows),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
        )
    return web.json_response({"object": "list", "data": rows})


async def audit(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/audit?since=&actor=&limit=&format=csv"""
    q = request.query
    try:
        since = s.parse_time(q["since"]) if "since" in q else None
        limit = int(q.get("limit", "1000"))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    rows = await asyncio.to_thread(s.query_audit, _database(request), since, q.get("actor"), limit)
    if q.get("format") == "csv":
        return web.Response(text=s.to_csv(rows), content_type="text/csv")
    return web.json_response({"object": "list", "data": rows})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/usage", usage)
    app.router.add_get("/api/v1/audit", audit)
