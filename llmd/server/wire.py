"""Requests aiohttp cannot parse: logged in one line and answered in the API's error shape.

aiohttp answers a request it cannot parse (a bad request line, a NUL or control character in
a header, an unknown Content-Encoding, broken chunked framing, an oversized header line)
itself, before any route or middleware runs: a text/plain 400 and an ERROR traceback. It is
the client's mistake, and API clients read errors as JSON (the official SDKs show the
`message` of OpenAI's error shape). aiohttp has no setting for either: the logger is its
`logger=` argument (`ServerLog`), the answer its connection handler's `handle_error`, which
`Runner` gives every connection (aiohttp is pinned; tests/unit/test_wire.py and the hostile
body table hold the behaviour).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from llmd.errors import error_body


def _reason(exc: BaseException | None) -> str:
    """The first line of aiohttp's reason, without its trailing colon."""
    if not isinstance(exc, HttpProcessingError):
        return ""
    if isinstance(exc, ContentEncodingError):
        # aiohttp's says to install a package: not the client's to do.
        return "its Content-Encoding is not one llmd reads (gzip, deflate or none)"
    first = next((ln.strip() for ln in exc.message.splitlines() if ln.strip()), "")
    return first.rstrip(":")[:200]


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The logger of aiohttp's connection handler (`web.AppRunner(logger=...)`).

    aiohttp logs a request it cannot parse (a NUL or another bad byte in a header, a bad
    request line, broken chunked encoding) with a traceback at ERROR, and answers 400 itself.
    That is the client's fault, not the server's: one INFO line with the first line of the
    reason (never the header's bytes, which may hold a key). Anything else is logged as
    aiohttp logs it."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, BaseException):
            exc = sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            reason = _reason(exc)
            client = args[0] if args else "?"
            self.logger.info("bad HTTP request from %s (answered %d): %s", client, exc.code, reason)
            return
        super().exception(msg, *args, **kwargs)


class ApiRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in OpenAI's error shape
    (the request line is unknown then, so Anthropic's routes get it too)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own first: it logs, and refuses when part of an answer is already out.
        super().handle_error(request, status, exc, message)
        if status < 500:
            reason = _reason(exc) or "malformed request"
            body = error_body(
                f"The request could not be read as HTTP/1.1: {reason}.",
                "invalid_request_error",
                "bad_http_request",
            )
        else:
            body = error_body("The server could not handle the request.", "server_error")
        response = web.json_response(body, status=status)
        response.force_close()  # what follows on this connection cannot be trusted
        return response


class _ApiServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner whose connections are ApiRequestHandlers."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ApiServer  # made by the app, so given its class after
        return server
