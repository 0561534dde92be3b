"""OpenAI-shaped errors that need the real daemon: `n` beyond a model's slots (the engine's
refusal), a lone surrogate that must not crash the model, hostile bytes in a request line or a
header (the log stays clean), and the daemon still serving after them. Errors refused before
the engine are tested in-process (tests/unit/test_serving_*.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.api import GEMMA, SMOL, SMOL_FILE, STORY, assert_error, chat_body, model_health, post

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


# The other invalid parameters are refused before the engine and are tested in-process
# (tests/unit/test_serving_chat.py); n beyond the model's slots is the real engine's refusal.
@pytest.mark.parametrize(("change", "param"), [({"n": 17}, "n")], ids=["n-beyond-slots"])
def test_chat_invalid_params(daemon: Daemon, change: dict[str, Any], param: str | None) -> None:
    body = chat_body(**change)
    if change.get("messages", 1) is None:
        del body["messages"]
    resp = post(daemon, "/v1/chat/completions", body)
    error = assert_error(resp, 400, param=param)
    assert error["type"] == "invalid_request_error"


# As for chat: the rest are in tests/unit/test_serving_completions.py; n beyond gemma's two
# slots is the real engine's refusal.
@pytest.mark.parametrize(("change", "param"), [({"n": 3}, "n")], ids=["n-beyond-slots"])
def test_completion_invalid_params(
    daemon: Daemon, change: dict[str, Any], param: str | None
) -> None:
    body: dict[str, Any] = {"model": GEMMA, "prompt": "hi", "max_tokens": 4}
    body.update(change)
    if body["prompt"] is None:
        del body["prompt"]
    error = assert_error(post(daemon, "/v1/completions", body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def _raw(daemon: Daemon, request: bytes) -> bytes:
    """Send bytes no HTTP client would, read the whole answer."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_hostile_bytes_in_a_request_stay_out_of_the_log(daemon: Daemon) -> None:
    """CR, LF, ESC and NUL in a URL reach the access line escaped; a NUL in a header is a 400
    and one INFO line (aiohttp alone logs an ERROR traceback, which test_health.py's last test
    would catch)."""
    answer = _raw(
        daemon,
        b"GET /probe%1b[31m%0d%0aFAKE%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 404 ")
    answer = _raw(daemon, b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    deadline = time.monotonic() + 10
    while "bad HTTP request" not in daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = daemon.logs()
    assert 'path="/probe\\u001b[31m\\r\\nFAKE\\u0000" status=404' in logs
    assert "bad HTTP request from 127.0.0.1 (answered 400): Invalid header value char" in logs
    assert "Error handling request" not in logs
    assert not any(c in logs for c in "\x1b\x00\r"), [c for c in "\x1b\x00\r" if c in logs]


def test_a_bad_grammars_text_reaches_the_client_not_the_log(daemon: Daemon) -> None:
    """llama.cpp's GBNF parser prints a bad grammar (request text) to stderr itself: the model
    process catches it, the reason goes to the client and the log keeps only llama.cpp's
    'failed to parse grammar' (request text reaches the log only with log_prompts)."""
    body = chat_body(max_tokens=2, grammar='root ::= "SECRET-GRAMMAR-TEXT" (')
    error = assert_error(post(daemon, "/v1/chat/completions", body), 400, param="grammar")
    assert error["message"].startswith("The grammar could not be parsed as GBNF: expecting")
    deadline = time.monotonic() + 10
    while "failed to parse grammar" not in daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = daemon.logs()
    assert "failed to parse grammar" in logs
    assert "SECRET-GRAMMAR-TEXT" not in logs and "error parsing grammar" not in logs


def test_still_serving_after_errors(daemon: Daemon) -> None:
    # The errors above left nothing broken: a normal request still works.
    resp = daemon.client().chat.completions.create(model=SMOL, messages=STORY, max_tokens=3)
    assert resp.usage is not None and resp.usage.completion_tokens <= 3


def test_lone_surrogate_does_not_crash_the_model(make_daemon: Callable[..., Daemon]) -> None:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"); that is no valid text to tokenize.

    The request must get a 4xx (or be served with the character replaced), and the model
    process must not die: a crash would fail every other request in flight on that model.
    """
    d = make_daemon(
        f"""
[engine]
ctx_per_seq = 512
parallel = 2

[models.smollm2]
path = "{SMOL_FILE}"
"""
    )
    before = model_health(d)
    assert before["state"] == "ready"
    chat = b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}], "max_tokens": 2}'
    completion = b'{"prompt": "hi \\udfff", "max_tokens": 2}'
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        resp = post(d, path, content=body)
        assert resp.status_code in (200, 400), (path, resp.status_code, resp.text)
        if resp.status_code == 400:
            assert_error(resp, 400)
    after = model_health(d)
    assert after["restarts"] == 0, after
    assert after["pid"] == before["pid"], after
    assert after["state"] == "ready", after
    ok = d.client().chat.completions.create(messages=STORY, model=SMOL, max_tokens=2)
    assert ok.choices[0].message.content is not None
