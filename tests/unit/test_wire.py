"""Requests aiohttp cannot parse (llmd/server/wire.py): answered in OpenAI's error shape by the
daemon's runner, logged in one line, and the connection closed."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from bench.daemon import free_port
from llmd.server.wire import Runner, ServerLog

BAD = {
    "NUL in a header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Key: sk-se\x00cret\r\n\r\n",
    "ESC in a header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: \x1b[31m\r\n\r\n",
    "Content-Encoding br": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}"
    ),
    "broken chunks": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    ),
    "header line over the limit": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: "
    + b"a" * 70_000
    + b"\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
}


async def _ask(raw: bytes) -> bytes:
    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", health)
    runner = Runner(app, access_log=None, logger=ServerLog())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 10)  # ends: the connection is closed
        writer.close()
        await writer.wait_closed()
        return answer
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("name", list(BAD))
def test_what_aiohttp_cannot_parse_is_a_400_in_the_error_shape(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    answer = asyncio.run(_ask(BAD[name]))
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == "400", answer[:300]
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert headers["content-type"] == "application/json; charset=utf-8"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_http_request"
    assert error["message"].startswith("The request could not be read as HTTP/1.1: ")
    assert "\x00" not in error["message"] and "sk-se" not in error["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_good_request_is_served_as_ever() -> None:
    answer = asyncio.run(_ask(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
