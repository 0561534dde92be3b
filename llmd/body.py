"""Request bodies: JSON parsed in one place, once per request.

Every handler that takes a JSON body reads it here, and so does the auth middleware (which
keeps the prompt of keys that log content): the body is parsed once and kept on the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llmd.errors import InvalidRequest

_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Parsed:
    value: Any = None
    error: str | None = None
    """The message of the 400 this body gets, if it is not JSON."""
    blank: bool = False


_PARSED = web.RequestKey("llmd_json_body", _Parsed)


async def read_json(request: web.Request, empty: Any = _REQUIRED) -> Any:
    """The body as JSON, or a 400 saying why it is not. With `empty` given, a blank body
    reads as that value (the admin API's bodies are optional)."""
    if _PARSED not in request:
        request[_PARSED] = await _parse(request)
    parsed = request[_PARSED]
    if parsed.blank and empty is not _REQUIRED:
        return empty
    if parsed.error is not None:
        raise InvalidRequest(parsed.error)
    return parsed.value


async def _parse(request: web.Request) -> _Parsed:
    try:
        text = await request.text()
    except UnicodeDecodeError:
        return _Parsed(error="The request body is not valid UTF-8.")
    blank = not text.strip()
    try:
        return _Parsed(json.loads(text), blank=blank)
    except json.JSONDecodeError as exc:
        return _Parsed(
            error=f"We could not parse the JSON body of your request ({exc.msg} at line "
            f"{exc.lineno} column {exc.colno}).",
            blank=blank,
        )
