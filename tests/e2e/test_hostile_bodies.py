"""Hostile bodies, one table row each (issue 19): what a careless client or an attacker sends to
the OpenAI routes (huge strings, deep nesting, NaN and 1e400, invalid UTF-8, lone surrogates,
50 MB bodies, wrong content types and encodings, wrong types in every field, tool-calling and
response_format junk). Every row is answered as its `status` says, never a 5xx and never a
hang (each request has a timeout), an error always in OpenAI's shape; and after each, a chat
succeeds on the same model process (same pid, no restart).

Most rows are 400s. A few are served (200) on purpose: valid JSON with odd text in it (control
characters, an escaped NUL, a lone surrogate, which llmd reads as U+FFFD), a huge number where
any number is allowed (a seed, top_k), a text/plain body (fetch's default type).
`LLMD_HOSTILE_REPORT=FILE` writes every row's answer as JSON (docs/robustness.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import pytest

from tests.e2e.api import assert_error, model_health
from tests.e2e.hostile import (
    ADMIN_ROWS,
    ANTHROPIC_ROWS,
    CHAT,
    HANGS,
    KEYS,
    LISTING,
    PARSER,
    ROWS,
    WRONG_TYPES,
    Row,
    chat,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

TIMEOUT = 45
"""Seconds a hostile request may take: less than the model process's hang watchdog (60 s), so
a request that holds the engine fails here rather than as a restart seen later."""

RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def report(daemon: Daemon) -> Iterator[None]:
    """Whatever the rows sent, the daemon logged no ERROR while they ran."""
    start = len(daemon.logs())
    yield
    if path := os.environ.get("LLMD_HOSTILE_REPORT"):
        Path(path).write_text(json.dumps(RESULTS, indent=1) + "\n", encoding="utf-8")
    logged = daemon.logs()[start:]
    assert " ERROR " not in logged and "Traceback" not in logged, logged[-5000:]


def send(daemon: Daemon, row: Row, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", **row.headers}
    return httpx.request(
        row.method, daemon.url + row.route, content=body, headers=headers, timeout=TIMEOUT
    )


def check(resp: httpx.Response, row: Row) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:2000])
    if row.status < 400:
        assert resp.status_code == row.status, resp.text[:2000]
        return
    if row.route.startswith("/v1/messages"):  # Anthropic's shape: the message names the field
        assert resp.status_code == row.status, resp.text[:2000]
        body = resp.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] not in ("api_error", "overloaded_error"), body
        assert body["error"]["message"].startswith(row.param or ""), body
        return
    error = assert_error(resp, row.status)
    assert error["type"] != "server_error", error  # a client's mistake, not the server's
    if row.param is not None:
        assert (error["param"] or "").startswith(row.param), error


def _param(resp: httpx.Response) -> Any:
    try:
        error = resp.json()["error"]
        return error.get("param", error.get("message", "").partition(":")[0])
    except (ValueError, KeyError, TypeError):
        return None


@pytest.mark.parametrize(
    "row",
    [*ROWS, *WRONG_TYPES, *ADMIN_ROWS, *HANGS, *LISTING, *KEYS, *PARSER, *ANTHROPIC_ROWS],
    ids=lambda row: row.name,
)
def test_a_hostile_body_is_answered_and_the_model_serves_on(daemon: Daemon, row: Row) -> None:
    before = model_health(daemon)
    body = row.payload()
    resp = send(daemon, row, body)
    RESULTS.append(
        {
            "row": row.name,
            "route": f"{row.method} {row.route}",
            "bytes": len(body),
            "status": resp.status_code,
            "param": _param(resp) if resp.status_code >= 400 else None,
        }
    )
    check(resp, row)
    # The same model process serves the next request.
    ok = httpx.post(daemon.url + CHAT, json=chat(), timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text
    after = model_health(daemon)
    assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"]), after
