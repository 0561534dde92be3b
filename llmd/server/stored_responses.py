"""Stored Responses read back: `GET` and `DELETE /v1/responses/{response_id}` and
`GET /v1/responses/{response_id}/input_items`, as OpenAI answers them.

The store (llmd/usage/responses.py) scopes every id to the key that made it: an unknown,
expired, deleted or another key's id is the same 404. These routes take a key like every /v1
route and count no tokens (their usage rows, if any, have none).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from llmd.errors import InvalidRequest
from llmd.record import get_record
from llmd.usage.responses import RESPONSE_STORE, ResponseNotFound, StoredResponse

DEFAULT_LIMIT = 20
MAX_LIMIT = 100  # OpenAI's range for input_items' limit: 1 to 100


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    key = get_record(request).key_name
    stored = await request.app[RESPONSE_STORE].load(response_id, key)
    if stored is None:
        raise ResponseNotFound(response_id)
    return stored


async def _json(body: Any) -> web.Response:
    """A JSON response encoded in a thread: a stored response may be megabytes."""
    text = await asyncio.to_thread(json.dumps, body, ensure_ascii=False)
    return web.Response(text=text, content_type="application/json")


async def retrieve(request: web.Request) -> web.Response:
    """GET /v1/responses/{response_id}: the Response object as it was sent."""
    if request.query.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidRequest(
            "Streaming a stored response again is not supported: retrieve it without 'stream'.",
            param="stream",
        )
    stored = await _stored(request)
    return await _json(stored.body)


async def delete(request: web.Request) -> web.Response:
    """DELETE /v1/responses/{response_id}: OpenAI's deletion object."""
    response_id = request.match_info["response_id"]
    key = get_record(request).key_name
    if not await request.app[RESPONSE_STORE].delete(response_id, key):
        raise ResponseNotFound(response_id)
    return web.json_response({"id": response_id, "object": "response", "deleted": True})


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"-?[0-9]{1,20}", value):  # int() would take " 7", "1_0" and "７"
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer, but got {value!r} instead.",
            param="limit",
            code="invalid_type",
        )
    limit = int(value)
    if limit < 1:
        raise InvalidRequest(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got "
            f"{limit} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise InvalidRequest(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, "
            f"but got {limit} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return limit


async def input_items(request: web.Request) -> web.Response:
    """GET /v1/responses/{response_id}/input_items?limit=&order=asc|desc&after=ITEM_ID: the
    request's input items as an OpenAI list, newest first by default (as OpenAI). `include`
    is accepted and ignored: llmd has nothing more to include."""
    query = request.query
    limit = _limit(query.get("limit"))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid 'order': expected 'asc' or 'desc', but got {order!r} instead.",
            param="order",
        )
    stored = await _stored(request)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    start = 0
    if "after" in query:
        after = query["after"]
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(
                f"Invalid 'after': no input item with id {after!r} in response '{stored.id}'.",
                param="after",
            )
        start = ids.index(after) + 1
    page = items[start : start + limit]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": start + limit < len(items),
    }
    return await _json(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
