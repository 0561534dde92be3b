"""The parser process (llmd/parser_process.py) and large bodies parsed in it (llmd/body.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmd.body import PARSE_APART_FROM, PARSER, read_request
from llmd.errors import APIError, InvalidRequest, ServiceUnavailable
from llmd.parser_process import ParserProcess
from llmd.protocol import CompletionRequest


def where(body: Any) -> dict[str, Any]:
    """A request's `parse` that says which process ran it."""
    if not isinstance(body, dict):
        raise InvalidRequest("not an object", param="body")
    return {"pid": os.getpid(), "keys": sorted(body)}


def slow(answer: str) -> str:
    time.sleep(0.5)
    return answer


def fail() -> None:
    raise InvalidRequest("bad value", param="prompt", code="odd")


async def _handler(request: web.Request) -> web.Response:
    try:
        parse = CompletionRequest.parse if request.query.get("model") else where
        value = await read_request(request, parse)
    except APIError as exc:
        return web.json_response({"error": exc.message, "status": exc.status})
    if isinstance(value, CompletionRequest):
        return web.json_response({"prompt": len(value.prompt)})
    return web.json_response(value)


def _post(bodies: list[bytes], query: str = "") -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        app = web.Application(client_max_size=32 << 20)
        app[PARSER] = parser = ParserProcess()
        app.router.add_post("/", _handler)
        out = []
        try:
            async with TestClient(TestServer(app)) as client:
                for body in bodies:
                    resp = await client.post("/" + query, data=io.BytesIO(body))
                    out.append(await resp.json())
        finally:
            await parser.close()
        return out

    return asyncio.run(run())


def test_a_large_body_is_parsed_in_the_parser_process_and_a_small_one_here() -> None:
    filler = "x" * PARSE_APART_FROM
    small, large, again = _post(
        [b'{"a": 1}', json.dumps({"b": filler}).encode(), json.dumps({"c": filler}).encode()]
    )
    assert small == {"pid": os.getpid(), "keys": ["a"]}
    assert large["keys"] == ["b"] and large["pid"] != os.getpid()
    assert again == {"pid": large["pid"], "keys": ["c"]}  # the same process, kept


def test_a_large_body_gets_the_same_answers_as_a_small_one() -> None:
    pad = " " * PARSE_APART_FROM
    cases = [
        b"{not json" + pad.encode(),
        b"[1, 2]" + pad.encode(),
        b'{"a": NaN}' + pad.encode(),
        b"\xff\xfe" + pad.encode(),
        json.dumps(list(range(300_001))).encode(),
    ]
    large = _post(cases)
    small = _post([c.rstrip() if c.endswith(b" ") else c for c in cases])
    for got, expected in zip(large, small, strict=True):
        assert got == expected and got["status"] == 400, got
    # A request model validated there: the request comes back as the handler would see it.
    prompt = list(range(250_000))
    body = {"model": "m", "prompt": prompt, "max_tokens": 1}
    assert _post([json.dumps(body).encode()], "?model=1") == [{"prompt": len(prompt)}]
    body["max_tokens"] = -1
    [out] = _post([json.dumps(body).encode()], "?model=1")
    assert out["status"] == 400 and "max_tokens" in out["error"]


def test_an_error_comes_back_whole() -> None:
    async def run() -> None:
        parser = ParserProcess()
        try:
            await parser.run(fail)
        except InvalidRequest as exc:
            assert (exc.message, exc.param, exc.code, exc.status) == (
                "bad value",
                "prompt",
                "odd",
                400,
            )
        else:
            raise AssertionError("no error")
        finally:
            await parser.close()

    asyncio.run(run())


def test_a_killed_parser_process_is_a_503_and_the_next_call_starts_another() -> None:
    async def run() -> None:
        parser = ParserProcess()
        try:
            assert await parser.run(str, 1) == "1"
            first = parser.pid
            assert first is not None
            call = asyncio.ensure_future(parser.run(slow, "never"))
            await asyncio.sleep(0.2)
            os.kill(first, signal.SIGKILL)
            try:
                await call
            except ServiceUnavailable as exc:
                assert exc.retry_after == 1 and exc.status == 503
            else:
                raise AssertionError("no 503")
            assert await parser.run(str, 2) == "2"
            assert parser.pid not in (None, first)
        finally:
            await parser.close()

    asyncio.run(run())


def test_a_caller_that_leaves_does_not_leave_its_answer_to_the_next() -> None:
    async def run() -> None:
        parser = ParserProcess()
        try:
            await parser.run(str, 0)  # started
            call = asyncio.ensure_future(parser.run(slow, "first"))
            await asyncio.sleep(0.1)
            call.cancel()
            assert await parser.run(str, "second") == "second"
        finally:
            await parser.close()

    asyncio.run(run())


def test_the_parser_process_runs_at_a_lower_priority() -> None:
    """Parsing a large body yields the CPU to the model's decoding (other clients' streams)."""
    from llmd.parser_process import NICENESS

    async def run() -> None:
        parser = ParserProcess()
        try:
            assert await parser.run(os.nice, 0) == min(19, os.nice(0) + NICENESS)
        finally:
            await parser.close()

    asyncio.run(run())
