"""Logging (llmd/logs.py): the formats, the request's fields on every line, journal priorities,
and configure() applied again on a reload."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from llmd.logs import Formatter
from llmd.record import RequestRecord, current_record


def test_formatter_formats_and_journal_levels() -> None:
    record = RequestRecord("rid-1", "POST", "/v1/x", "/v1/x", "", 0.0, 0.0, model="m")
    token = current_record.set(record)
    try:
        from llmd.logs import RequestContext

        rec = logging.LogRecord("llmd.x", logging.ERROR, __file__, 1, "boom %s", ("a",), None)
        RequestContext().filter(rec)
    finally:
        current_record.reset(token)
    assert json.loads(Formatter("json").format(rec))["request_id"] == "rid-1"
    kv = Formatter("keyvalue").format(rec)
    assert "request_id=rid-1" in kv and "model=m" in kv and 'msg="boom a"' in kv
    text = Formatter("text", journal=True).format(rec)
    assert text.startswith("<3>llmd.x request_id=rid-1 boom a")
    rec.levelno, rec.levelname = logging.DEBUG, "DEBUG"
    assert Formatter("json", journal=True).format(rec).startswith("<7>{")


def test_configure_reapplies_level_format_and_files(tmp_path: Path) -> None:
    """What a reload does: configure() again replaces level, format and files."""
    from llmd import logs
    from llmd.settings import Settings

    first = Settings.model_validate(
        {"logging": {"level": "warning", "format": "keyvalue", "dir": str(tmp_path / "a")}}
    )
    second = Settings.model_validate(
        {"logging": {"level": "debug", "format": "json", "dir": str(tmp_path / "b")}}
    )
    try:
        logs.configure(first, stream=io.StringIO())
        logging.getLogger("llmd.test").info("hidden at warning")
        logging.getLogger("llmd.test").warning("shown")
        logs.configure(second, stream=io.StringIO())
        assert logging.getLogger().level == logging.DEBUG
        logging.getLogger("llmd.test").debug("debug now")
    finally:
        logs.shutdown()
    a = (tmp_path / "a" / "app.log").read_text()
    assert "hidden" not in a and "level=warning logger=llmd.test msg=shown" in a
    assert "level=warning" in (tmp_path / "a" / "error.log").read_text()
    b = [json.loads(line) for line in (tmp_path / "b" / "app.log").read_text().splitlines()]
    assert b == [
        {"time": b[0]["time"], "level": "debug", "logger": "llmd.test", "msg": "debug now"}
    ]


HOSTILE = "/v1/x\x1b[31m\r\nFAKE INFO llmd.access forged\x00\x7f\x9b[2J\u2028\u202e"
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def test_request_text_never_reaches_a_line_raw() -> None:
    """CR, LF, ESC, NUL, DEL, C1 controls, line separators and bidi overrides from a request
    (a message's arguments, a field's value) are escaped in every format; one line each."""
    access = logging.LogRecord("llmd.access", logging.INFO, __file__, 1, "request", None, None)
    access.fields = {"path": HOSTILE, "method": "GET"}
    warning = logging.LogRecord(
        "llmd.api", logging.WARNING, __file__, 1, "%s %s: %r", ("GET", HOSTILE, HOSTILE), None
    )
    for fmt in ("text", "keyvalue", "json"):
        for journal in (False, True):
            for rec in (access, warning):
                line = Formatter(fmt, journal=journal).format(rec)
                assert not UNSAFE.search(line), (fmt, journal, line)
                if fmt == "json":
                    obj = json.loads(line.removeprefix("<6>").removeprefix("<4>"))
                    if rec is access:  # JSON's own escapes: the value reads back exactly
                        assert obj["path"] == HOSTILE
    text = Formatter("text").format(warning)
    assert text.endswith(
        "GET /v1/x\\x1b[31m\\r\\nFAKE INFO llmd.access forged\\x00\\x7f\\x9b[2J\\u2028\\u202e: "
        "'/v1/x\\x1b[31m\\r\\nFAKE INFO llmd.access forged\\x00\\x7f\\x9b[2J\\u2028\\u202e'"
    )
    assert 'path="/v1/x\\u001b[31m\\r\\nFAKE' in Formatter("text").format(access)
    assert "\\u009b[2J\\u2028\\u202e" in Formatter("json").format(access)


def test_a_traceback_keeps_its_lines_and_numbers_their_format() -> None:
    try:
        raise ValueError("bad\x1bvalue")
    except ValueError:
        exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "llmd.api", logging.ERROR, __file__, 1, "%d requests, %.1f s", (3, 0.25), exc_info
    )
    text = Formatter("text").format(rec)
    assert "3 requests, 0.2 s\nTraceback (most recent call last):\n" in text
    assert text.endswith("ValueError: bad\\x1bvalue")


def test_escaped_through_the_writer_thread() -> None:
    """configure()'s queue resolves the message before the writer thread formats it."""
    from llmd import logs
    from llmd.settings import Settings

    out = io.StringIO()
    try:
        logs.configure(Settings(), stream=out)
        logging.getLogger("llmd.test").warning("client sent %s", "a\r\nb\x1b")
    finally:
        logs.shutdown()
    assert out.getvalue().endswith("WARNING llmd.test client sent a\\r\\nb\\x1b\n")


def test_a_request_aiohttp_cannot_parse_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NUL in a header (or any request aiohttp refuses to parse) is answered 400 by aiohttp
    and logged in one line without the header's bytes; aiohttp alone logs a traceback at
    ERROR."""
    from aiohttp import web

    from bench.daemon import free_port
    from llmd.server.wire import ServerLog

    caplog.set_level(logging.DEBUG, logger="aiohttp.server")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> bytes:
        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None, logger=ServerLog())
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Key: sk-se\x00cret\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        ("INFO", "bad HTTP request from 127.0.0.1 (answered 400): Invalid header value char", None)
    ]
