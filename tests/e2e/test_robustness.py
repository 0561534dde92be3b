"""Load, failure and shutdown behaviour of the real daemon with a real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.e2e.conftest import ROOT, SMOL, Daemon

ONE_SLOT = f"""
[server]
max_queue = 0

[engine]
ctx_per_seq = 1024
parallel = 1

[models.smollm2]
path = "{SMOL}"
"""

LONG = {"ignore_eos": True}


def _model(d: Daemon, name: str = "smollm2") -> dict[str, object]:
    models = d.health()["models"]
    assert isinstance(models, list)
    return next(m for m in models if m["name"] == name)


def _wait(predicate: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _assert_error_shape(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_queue_full_is_refused_at_once(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ONE_SLOT)
    client = d.client()
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count to one thousand."}],
        max_tokens=400,
        stream=True,
        extra_body=LONG,
    )
    first = next(iter(stream))  # the only slot is now taken
    assert first.choices[0].delta.role == "assistant"
    resp = httpx.post(
        d.url + "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert _assert_error_shape(resp)["code"] == "server_busy"
    stream.close()


def test_disconnect_frees_the_slot(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ONE_SLOT)
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        for _ in range(6):
            next(lines)
    # The stream is closed after a few tokens; the daemon must notice and free the slot.
    _wait(lambda: _model(d)["requests_in_flight"] == 0 and _model(d)["running"] == 0)
    # With one slot and no queue, this succeeds only if the abandoned sequence is gone.
    out = d.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.usage is not None and out.usage.completion_tokens >= 1

    # A non-streaming client that gives up (timeout) frees its slot as well.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(d.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=1.5)
    _wait(lambda: _model(d)["requests_in_flight"] == 0 and _model(d)["running"] == 0)
    out = d.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_killed_model_process_is_restarted(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ONE_SLOT.replace("max_queue = 0", "max_queue = 4"))
    client = d.client()
    old_pid = _model(d)["pid"]
    assert isinstance(old_pid, int)

    errors: list[BaseException] = []

    def long_request() -> None:
        try:
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Write a long essay."}],
                max_tokens=900,
                extra_body=LONG,
            )
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    worker = threading.Thread(target=long_request)
    worker.start()
    _wait(lambda: _model(d)["running"] == 1)
    os.kill(old_pid, signal.SIGKILL)
    worker.join(60)
    assert not worker.is_alive()
    # The in-flight request got a clear 503, not a hang or a 500.
    assert len(errors) == 1 and isinstance(errors[0], openai.APIStatusError)
    assert errors[0].status_code == 503
    # The daemon stayed up the whole time.
    assert httpx.get(d.url + "/health", timeout=5).status_code == 200
    _wait(lambda: _model(d)["state"] == "ready" and _model(d)["pid"] != old_pid)
    assert _model(d)["restarts"] == 1
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.choices[0].message.content is not None


def test_hung_model_process_is_killed_and_restarted(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ONE_SLOT.replace("parallel = 1", "parallel = 1\nhang_timeout_s = 3"))
    pid = _model(d)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGSTOP)  # frozen, as a hang inside llama.cpp would leave it
    try:
        assert httpx.get(d.url + "/health", timeout=5).status_code == 200
        # Silent for hang_timeout_s: the daemon kills it and starts another.
        _wait(lambda: _model(d)["pid"] != pid, seconds=30)
    finally:
        if _model(d)["pid"] == pid:
            os.kill(pid, signal.SIGKILL)
    assert "hung, killed" in d.logs()
    resp = httpx.post(
        d.url + "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    if resp.status_code != 200:  # it may already be back
        assert resp.status_code == 503
        assert "Retry-After" in resp.headers
        _assert_error_shape(resp)
    _wait(lambda: _model(d)["state"] == "ready")


def test_broken_model_file_fails_alone(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    d = make_daemon(
        ONE_SLOT
        + f"""
[models.broken]
path = "{broken}"
"""
    )
    _wait(lambda: _model(d, "broken")["state"] in ("failed", "restarting"))
    assert _model(d, "broken")["error"]
    resp = httpx.post(
        d.url + "/v1/completions", json={"model": "broken", "prompt": "x"}, timeout=30
    )
    assert resp.status_code == 503
    assert "broken" in _assert_error_shape(resp)["message"]  # type: ignore[operator]
    out = d.client().completions.create(model="smollm2", prompt="Hello", max_tokens=3)
    assert out.choices[0].text is not None


def test_ready_reports_a_failed_default_model(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.gguf"
    d = make_daemon(f'[models.gone]\npath = "{missing}"\n', wait_ready=False)
    _wait(lambda: _model(d, "gone")["state"] in ("failed", "restarting"))
    resp = httpx.get(d.url + "/ready", timeout=5)
    assert resp.status_code == 503
    assert "gone" in resp.json()["reason"]


def test_sigterm_lets_in_flight_requests_finish(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ONE_SLOT)
    stream = d.client().chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=40,
        stream=True,
        extra_body=LONG,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    next(chunks)
    d.proc.send_signal(signal.SIGTERM)
    rest = list(chunks)
    usage = rest[-1].usage
    assert usage is not None and usage.completion_tokens == 40
    assert d.proc.wait(60) == 0
    assert "stopped" in d.logs()


def _llmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nport = 8000\nbogus = 1\n", ":3: server.bogus: unknown setting"),
        ("[server]\n\nport = 70000\n", ":3: server.port: Input should be less than or equal"),
        ('[engine]\nparallel = "many"\n', ":2: engine.parallel: Input should be a valid integer"),
        ("[server\nport = 1\n", "not valid TOML"),
        ("[models.x]\naliases = []\n", "models.x.path: required setting is missing"),
    ],
)
def test_bad_config_is_refused_with_line_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    checked = _llmd("check-config", "--config", str(path), cwd=tmp_path)
    assert checked.returncode == 2
    assert str(path) in checked.stderr and expected in checked.stderr
    served = _llmd("serve", "--config", str(path), cwd=tmp_path)
    assert served.returncode == 2
    assert expected in served.stderr


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    out = _llmd("check-config", "--config", str(ROOT / "etc" / "llmd.toml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 model(s)" in out.stdout
