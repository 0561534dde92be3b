"""Request bodies: JSON parsed in one place, once per request.

Every handler that takes a JSON body reads it here, and so does the auth middleware (which
keeps the prompt of keys that log content): the body is parsed once and kept on the request.

Neither the JSON decoder nor pydantic lets go of the GIL, so a thread would not spare the
other streams: 299,000 token ids cost the event loop ~0.4 s to parse and validate, a 30 MB
prompt ~0.35 s, and sent back to back they took every other stream's inter-token p99 to 7x
and 2.3x (docs/benchmarks.md). So a body of 1 MiB or more is decoded, parsed and validated in
the parser process (llmd/parser_process.py), started at the first such body, and only the
validated request comes back; smaller bodies cost the loop a few milliseconds and stay here.
A body is also bounded by how many values it holds, wherever it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from llmd.errors import InvalidRequest
from llmd.parser_process import ParserProcess

T = TypeVar("T")

_REQUIRED: Any = object()
MAX_OBJECTS = 20_000
"""JSON objects in one body (messages, content parts, tools' schemas)."""
MAX_SCALARS = 300_000
"""Numbers and strings in one body (token ids, inputs): OpenAI caps an embeddings request at
300,000 tokens, the largest body a client has reason to send."""
_COUNT_FROM = 1 << 20
"""Bodies under 1 MiB cannot reach the bounds' cost: parsed without counting."""
PARSE_APART_FROM = 1 << 20
"""Bodies of this many bytes or more are parsed and validated in the parser process."""


class _TooMany(Exception):
    pass


@dataclass(frozen=True)
class _Parsed:
    value: Any = None
    reason: str | None = None
    """Why the body is not JSON (the decoder's message), if it is not."""
    where: str = ""
    """Where the decoder stopped: " at line L column C"."""
    is_utf8: bool = True
    blank: bool = False
    unreadable: str | None = None
    """Why the body could not be read as text at all (its encoding or charset)."""


_PARSED = web.RequestKey("llmd_json_body", _Parsed)


async def read_json(
    request: web.Request,
    empty: Any = _REQUIRED,
    *,
    not_json: str | None = None,
    with_position: bool = True,
) -> Any:
    """The body as JSON, or a 400 saying why it is not. With `empty` given, a blank body
    reads as that value (the admin API's bodies are optional). `not_json` replaces the
    message of a body that is not JSON, and `with_position=False` leaves out where the
    decoder stopped: the keys and model admin APIs keep the messages they always gave."""
    if _PARSED not in request:
        raw = await _read(request)
        request[_PARSED] = raw if isinstance(raw, _Parsed) else _decode(raw, *_declared(request))
    return _value(request[_PARSED], empty, not_json, with_position)


async def read_request(request: web.Request, parse: Callable[[Any], T]) -> T:
    """The body as the request `parse` makes of it (a request model's `parse`), or the 400
    saying why it is not one. A large body is parsed and validated in the parser process
    (`app[PARSER]`), so the event loop only reads its bytes and takes the result back."""
    if _PARSED not in request:
        raw = await _read(request)
        parser = request.app.get(PARSER)
        if isinstance(raw, bytes) and len(raw) >= PARSE_APART_FROM and parser is not None:
            return await parser.run(_parse_apart, raw, *_declared(request), parse)
        request[_PARSED] = raw if isinstance(raw, _Parsed) else _decode(raw, *_declared(request))
    return parse(await read_json(request))


def _parse_apart(
    raw: bytes, charset: str | None, content_type: str | None, parse: Callable[[Any], T]
) -> T:
    """In the parser process: the body decoded, parsed and validated as on the loop."""
    return parse(_value(_decode(raw, charset, content_type), _REQUIRED, None, True))


def _value(parsed: _Parsed, empty: Any, not_json: str | None, with_position: bool) -> Any:
    if parsed.unreadable is not None:
        raise InvalidRequest(parsed.unreadable)
    if parsed.blank and empty is not _REQUIRED:
        return empty
    if not parsed.is_utf8:
        raise InvalidRequest(not_json or "The request body is not valid UTF-8.")
    if parsed.reason is not None:
        where = parsed.where if with_position else ""
        reason = f"We could not parse the JSON body of your request ({parsed.reason}{where})."
        raise InvalidRequest(not_json or reason)
    return parsed.value


def _declared(request: web.Request) -> tuple[str | None, str | None]:
    """(charset, content type) as the request declares them; None for what it leaves out."""
    declared = request.content_type if "Content-Type" in request.headers else None
    return request.charset, declared


async def _read(request: web.Request) -> bytes | _Parsed:
    """The body's bytes, decompressed, or why they could not be read."""
    try:
        return await request.read()
    except web.RequestPayloadError:
        # The bytes of the body are not what the headers say: `Content-Encoding: gzip` (or
        # deflate) on bytes that do not decompress, chunks that do not frame.
        _abandon(request)
        return _Parsed(
            unreadable="The request body could not be read: its Content-Encoding or its "
            "chunked framing is broken."
        )


def _decode(raw: bytes, charset: str | None, content_type: str | None) -> _Parsed:
    """The body's bytes as JSON (what aiohttp's request.text() and json.loads would make of
    them), or why they are not."""
    try:
        text = raw.decode(charset or "utf-8")
    except UnicodeDecodeError:
        return _Parsed(is_utf8=False)
    except LookupError:
        # `Content-Type: application/json; charset=bogus`: Python knows no such codec.
        return _Parsed(unreadable=f"The request body's charset {charset!r} is unknown.")
    blank = not text.strip()
    if content_type is not None and not blank and not _is_json_type(content_type):
        # curl's -d without -H sends a form type: a mistake to name, not to guess past.
        reason = f"the Content-Type is {content_type}, not application/json"
        return _Parsed(reason=reason, blank=blank)
    try:
        return _Parsed(_loads(text), blank=blank)
    except _TooMany as exc:
        return _Parsed(unreadable=str(exc))
    except json.JSONDecodeError as exc:
        where = f" at line {exc.lineno} column {exc.colno}"
        return _Parsed(reason=exc.msg, where=where, blank=blank)
    except ValueError as exc:
        return _Parsed(reason=str(exc), blank=blank)
    except RecursionError:
        # The decoder recurses once per level and stops near Python's recursion limit.
        return _Parsed(reason="it nests arrays or objects too deeply", blank=blank)


def _loads(text: str) -> Any:
    """The JSON value of `text`; _TooMany past the bounds on what a body holds."""
    if len(text) < _COUNT_FROM:
        return json.loads(text, parse_constant=_no_constant)
    # Every string is two quotes (an escaped quote inside one counts too: an upper bound).
    counts = {"objects": 0, "scalars": text.count('"') // 2}
    if counts["scalars"] > MAX_SCALARS:
        raise _TooMany(f"The request body holds more than {MAX_SCALARS} strings and numbers.")

    def obj(value: dict[str, Any]) -> dict[str, Any]:
        counts["objects"] += 1
        if counts["objects"] > MAX_OBJECTS:
            raise _TooMany(f"The request body holds more than {MAX_OBJECTS} JSON objects.")
        return value

    def number(kind: type[int] | type[float]) -> Any:
        def parse(literal: str) -> int | float:
            counts["scalars"] += 1
            if counts["scalars"] > MAX_SCALARS:
                raise _TooMany(
                    f"The request body holds more than {MAX_SCALARS} strings and numbers."
                )
            return kind(literal)

        return parse

    return json.loads(
        text,
        parse_constant=_no_constant,
        object_hook=obj,
        parse_int=number(int),
        parse_float=number(float),
    )


def _abandon(request: web.Request) -> None:
    """Give up on a body that could not be read: the connection ends after the answer.

    aiohttp would otherwise read on through the rest of the body after the handler (its
    "lingering" read), meet the same error again and log it as an ERROR traceback
    ("Unhandled exception"); what follows the bad bytes on the connection cannot be trusted."""
    request.content.feed_eof()
    request.protocol.close()


# What clients send JSON under: JSON itself, and the defaults of tools that post a string or
# bytes without saying (browsers' fetch: text/plain; aiohttp and others: octet-stream). Forms,
# multipart, XML and the rest are refused.
_JSON_TYPES = ("application/json", "text/plain", "application/octet-stream")


def _is_json_type(content_type: str) -> bool:
    return content_type in _JSON_TYPES or content_type.endswith("+json")


def _no_constant(name: str) -> Any:
    """Python's decoder takes NaN and Infinity; JSON (RFC 8259) has neither."""
    raise ValueError(f"{name} is not a JSON value")


PARSER = web.AppKey("body_parser", ParserProcess)
