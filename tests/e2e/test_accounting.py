"""Request ids and the per-request record, seen through the real daemon's responses and log."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import httpx2 as httpx

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

SECRET = "purple-elephant-umbrella-7731"


def access_line(daemon: Daemon, request_id: str) -> str:
    """The access log line of one request (it is written when the request ends)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in daemon.logs().splitlines():
            if f"request_id={request_id} " in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")


def field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, (name, line)
    return match.group(1)


def test_request_id_generated_and_logged(daemon: Daemon) -> None:
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": f"Say {SECRET}"}],
        "max_tokens": 5,
    }
    resp = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    assert re.fullmatch(r"req-[0-9a-f]{32}", rid)
    usage = resp.json()["usage"]
    line = access_line(daemon, rid)
    assert field(line, "status") == "200"
    assert field(line, "model") == "smollm2"
    assert field(line, "prompt_tokens") == str(usage["prompt_tokens"])
    assert field(line, "completion_tokens") == str(usage["completion_tokens"])
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert field(line, "cached_tokens") == str(cached)
    assert float(field(line, "ttft_s")) <= float(field(line, "latency_s"))
    # No prompt or answer text in the log unless the operator asks for it (log_prompts).
    assert SECRET not in daemon.logs()
    assert resp.json()["choices"][0]["message"]["content"] not in line


def test_client_request_id_kept_on_stream_and_error(daemon: Daemon) -> None:
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    headers = {"X-Request-Id": "branch-7.ticket-42"}
    with httpx.stream(
        "POST", daemon.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as resp:
        assert resp.headers["x-request-id"] == "branch-7.ticket-42"
        assert "".join(resp.iter_text()).rstrip().endswith("data: [DONE]")
    line = access_line(daemon, "branch-7.ticket-42")
    assert field(line, "stream") == "true"
    assert int(field(line, "completion_tokens")) >= 1

    bad = httpx.post(
        daemon.url + "/v1/chat/completions",
        json={"model": "no-such-model", "messages": []},
        headers={"X-Request-Id": "bad one with spaces"},
        timeout=60,
    )
    assert bad.status_code in (400, 404)
    rid = bad.headers["x-request-id"]
    assert rid.startswith("req-"), "an id unfit for logs is replaced"
    line = access_line(daemon, rid)
    assert field(line, "status") == str(bad.status_code)
    error = bad.json()["error"]
    assert field(line, "error") == (error["code"] or error["type"])


def test_request_id_on_unknown_route(daemon: Daemon) -> None:
    resp = httpx.get(daemon.url + "/v1/nothing-here", timeout=10)
    assert resp.status_code == 404
    assert resp.headers["x-request-id"].startswith("req-")
