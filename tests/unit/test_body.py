"""Request bodies (llmd/body.py): parsed once, errors as 400s that say why."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmd.body import read_json
from llmd.errors import InvalidRequest


async def _echo(request: web.Request) -> web.Response:
    """What read_json made of the body: read twice, once with a value for a blank body."""
    try:
        first = await read_json(request)
    except InvalidRequest as exc:
        first = {"error": exc.message}
    try:
        again = await read_json(request, empty={"blank": True})
    except InvalidRequest as exc:
        again = {"error": exc.message}
    return web.json_response({"first": first, "again": again})


def _post(body: bytes) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        app = web.Application(client_max_size=32 << 20)  # as the daemon's
        app.router.add_post("/", _echo)
        async with TestClient(TestServer(app)) as client:
            # A stream: aiohttp warns (an error here) of large bytes sent at once.
            resp = await client.post("/", data=io.BytesIO(body))
            result: dict[str, Any] = await resp.json()
            return result

    return asyncio.run(run())


def test_json_is_parsed() -> None:
    assert _post(json.dumps({"a": [1, 2]}).encode()) == {
        "first": {"a": [1, 2]},
        "again": {"a": [1, 2]},
    }


def test_bad_json_says_where() -> None:
    out = _post(b"{not json")
    message = (
        "We could not parse the JSON body of your request (Expecting property name enclosed "
        "in double quotes at line 1 column 2)."
    )
    assert out == {"first": {"error": message}, "again": {"error": message}}


def test_a_blank_body_is_an_error_unless_a_value_is_given_for_it() -> None:
    out = _post(b"  \n")
    assert out["first"] == {
        "error": "We could not parse the JSON body of your request (Expecting value at line 2 "
        "column 1)."
    }
    assert out["again"] == {"blank": True}


def test_bytes_that_are_not_utf8() -> None:
    error = {"error": "The request body is not valid UTF-8."}
    assert _post(b"\xff\xfe\x00") == {"first": error, "again": error}


async def _keys_and_admin(request: web.Request) -> web.Response:
    """The two admin APIs' own messages, kept from before the body was parsed in one place."""
    out: dict[str, str] = {}
    for name, kwargs in (
        ("keys", {"not_json": "The request body is not valid JSON."}),
        ("admin", {"with_position": False}),
    ):
        try:
            await read_json(request, **kwargs)  # type: ignore[arg-type]
        except InvalidRequest as exc:
            out[name] = exc.message
    return web.json_response(out)


def test_the_admin_apis_keep_their_messages() -> None:
    async def run(body: bytes) -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/", _keys_and_admin)
        async with TestClient(TestServer(app)) as client:
            result: dict[str, Any] = await (await client.post("/", data=body)).json()
            return result

    assert asyncio.run(run(b"[1")) == {
        "keys": "The request body is not valid JSON.",
        "admin": "We could not parse the JSON body of your request (Expecting ',' delimiter).",
    }
    assert asyncio.run(run(b"\xff"))["keys"] == "The request body is not valid JSON."


def _post_as(body: bytes, content_type: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/", _echo)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/", data=body, headers={"Content-Type": content_type})
            result: dict[str, Any] = await resp.json()
            return result

    return asyncio.run(run())


def test_a_body_under_a_form_or_other_non_json_type_is_refused() -> None:
    body = json.dumps({"a": 1}).encode()
    for accepted in ("application/json; charset=utf-8", "text/plain", "application/vnd.x+json"):
        assert _post_as(body, accepted)["first"] == {"a": 1}
    for refused in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        error = _post_as(body, refused)["first"]["error"]
        assert "not application/json" in error, error


def test_nan_infinity_and_deep_nesting_are_400s_not_500s() -> None:
    for constant in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
        error = _post(constant)["first"]["error"]
        assert "is not a JSON value" in error, error
    for deep in (b"[" * 100_000, b'{"a":' * 100_000):
        assert "too deeply" in _post(deep)["first"]["error"]
    nested: Any = []
    for _ in range(49):
        nested = [nested]
    assert _post(b"[" * 50 + b"]" * 50)["first"] == nested  # deep, but not too deep


def _post_with(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async def run() -> tuple[int, dict[str, Any]]:
        app = web.Application()
        app.router.add_post("/", _echo)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/", data=body, headers=headers)
            result: dict[str, Any] = await resp.json()
            return resp.status, result

    return asyncio.run(run())


def test_an_unknown_charset_is_a_400_not_a_500() -> None:
    """Python has no codec 'bogus': request.text() raised LookupError, a 500 in the daemon."""
    headers = {"Content-Type": "application/json; charset=bogus"}
    _, result = _post_with(b'{"a": 1}', headers)
    assert result["first"] == {"error": "The request body's charset 'bogus' is unknown."}
    # A charset Python knows reads as it says.
    headers = {"Content-Type": "application/json; charset=latin-1"}
    assert _post_with('{"a": "é"}'.encode("latin-1"), headers)[1]["first"] == {"a": "é"}


def test_a_body_that_does_not_decompress_is_a_400_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`Content-Encoding: gzip` on bytes that are not gzip: aiohttp raised RequestPayloadError
    from request.text() (a 500 in the daemon), and its lingering read of the rest logged an
    ERROR traceback; now a 400, the connection closed after it, nothing logged."""
    for encoding in ("gzip", "deflate"):
        with caplog.at_level(logging.ERROR):
            status, result = _post_with(b"not compressed" * 1000, {"Content-Encoding": encoding})
        assert status == 200, result  # _echo answers what read_json said
        assert "Content-Encoding" in result["first"]["error"], result
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    body = gzip.compress(b'{"a": 1}')
    assert _post_with(body, {"Content-Encoding": "gzip"})[1]["first"] == {"a": 1}


def test_a_body_of_too_many_values_is_refused_before_it_is_validated() -> None:
    """Parsing and validating hold the event loop: a body is bounded by what it holds."""
    from llmd.body import MAX_OBJECTS, MAX_SCALARS

    many_objects = json.dumps([{"role": "user"}] * (MAX_OBJECTS + 1) + ["x" * (1 << 20)])
    assert f"more than {MAX_OBJECTS} JSON objects" in _post(many_objects.encode())["first"]["error"]
    for many in (list(range(MAX_SCALARS + 1)), ["a"] * (MAX_SCALARS + 1)):
        error = _post(json.dumps(many).encode())["first"]["error"]
        assert f"more than {MAX_SCALARS} strings and numbers" in error
    # At the bounds, and a long text that is one string: parsed as ever.
    at_bounds = [{"n": 1.5}] * (MAX_OBJECTS - 1) + list(range(MAX_SCALARS - MAX_OBJECTS * 2))
    assert len(_post(json.dumps(at_bounds).encode())["first"]) == len(at_bounds)
    text = "a, b: {c} [d] 1 2 3 " * 200_000
    assert _post(json.dumps({"text": text}).encode())["first"] == {"text": text}
