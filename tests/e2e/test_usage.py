"""Usage records, content logging, purge, the audit log and database faults: real daemon,
real model, real SQLite (read directly from the file where the test needs the ground truth)."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from llmd.auth.keys import add_key
from tests.e2e.conftest import SMOL, Daemon, bearer, start_daemon

CONFIG = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 512
parallel = 4

[models.smollm2]
path = "{SMOL}"
"""
SECRET_WORD = "tangerine-lighthouse-4417"


@pytest.fixture(scope="module")
def usage_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    tmp = tmp_path_factory.mktemp("usage")
    _, admin = add_key(tmp / "keys.toml", "root", admin=True)
    d = start_daemon(tmp, CONFIG)
    yield d, admin
    assert d.stop() == 0, d.logs()


def new_key(d: Daemon, admin: str, **fields: Any) -> tuple[str, str]:
    name = f"u-{uuid.uuid4().hex[:8]}"
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name, **fields}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 201, resp.text
    return name, resp.json()["secret"]


def db_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def client(d: Daemon, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)


def test_usage_totals_equal_the_usage_fields(usage_daemon: tuple[Daemon, str]) -> None:
    d, admin = usage_daemon
    name, secret = new_key(d, admin)
    c = client(d, secret)
    sums = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    ids = []
    for i in range(3):
        out = c.chat.completions.with_raw_response.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=6 + i,
        )
        ids.append(out.headers["x-request-id"])
        usage = out.parse().usage
        assert usage is not None
        sums["prompt_tokens"] += usage.prompt_tokens
        sums["completion_tokens"] += usage.completion_tokens
        assert usage.prompt_tokens_details is not None
        sums["cached_tokens"] += usage.prompt_tokens_details.cached_tokens or 0
    stream = c.completions.create(
        model="smollm2",
        prompt="Once upon a time",
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.usage is not None
    sums["prompt_tokens"] += last.usage.prompt_tokens
    sums["completion_tokens"] += last.usage.completion_tokens
    grouped = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": name, "group_by": "key"},
        headers=bearer(admin),
        timeout=10,
    ).json()["data"]
    assert len(grouped) == 1
    row = grouped[0]
    assert row["requests"] == 4 and row["errors"] == 0
    for field, total in sums.items():
        assert row[field] == total, field
    assert row["total_tokens"] == sums["prompt_tokens"] + sums["completion_tokens"]
    listed = httpx.get(
        d.url + "/api/v1/usage", params={"key": name}, headers=bearer(admin), timeout=10
    ).json()
    assert not listed["has_more"]
    records = listed["data"][::-1]  # newest first: turned round into the order they were sent
    assert [r["request_id"] for r in records][:3] == ids
    for r in records:
        assert r["model"] == "smollm2" and r["status"] == 200 and r["client"] == "127.0.0.1"
        assert 0 < r["ttft_ms"] <= r["latency_ms"]
    assert [r["stream"] for r in records] == [0, 0, 0, 1]


def test_filters_grouping_and_csv(usage_daemon: tuple[Daemon, str]) -> None:
    d, admin = usage_daemon
    name, secret = new_key(d, admin)
    for _ in range(2):
        client(d, secret).completions.create(model="smollm2", prompt="Hi", max_tokens=2)
    error = httpx.post(
        d.url + "/v1/completions",
        json={"model": "smollm2", "prompt": "Hi", "max_tokens": 100_000},
        headers=bearer(secret),
        timeout=30,
    )
    assert error.status_code == 400
    today = dt.datetime.now(dt.UTC).date().isoformat()
    params = {"key": name, "group_by": "day,model", "since": today, "until": today}
    rows = httpx.get(
        d.url + "/api/v1/usage", params=params, headers=bearer(admin), timeout=10
    ).json()["data"]
    assert rows == [
        {
            "day": today,
            "model": "smollm2",
            "requests": 3,
            "errors": 1,
            "prompt_tokens": rows[0]["prompt_tokens"],
            "cached_tokens": rows[0]["cached_tokens"],
            "completion_tokens": 4,
            "total_tokens": rows[0]["prompt_tokens"] + 4,
            "avg_latency_ms": rows[0]["avg_latency_ms"],
            "cache_hits": 0,  # sampled requests: never answered from the cache
        }
    ]
    csv_resp = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": name, "format": "csv"},
        headers=bearer(admin),
        timeout=10,
    )
    assert csv_resp.headers["content-type"].startswith("text/csv")
    lines = csv_resp.text.strip().splitlines()
    assert lines[0].startswith("id,time,request_id,key,model,endpoint,status,error")
    assert len(lines) == 4 and sum(",400," in line for line in lines) == 1
    yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
    none = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": name, "until": yesterday},
        headers=bearer(admin),
        timeout=10,
    ).json()["data"]
    assert none == []
    bad = httpx.get(
        d.url + "/api/v1/usage", params={"group_by": "colour"}, headers=bearer(admin), timeout=10
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_no_content_stored_unless_asked(usage_daemon: tuple[Daemon, str]) -> None:
    d, admin = usage_daemon
    db = d.log.parent / "usage.db"
    _, plain = new_key(d, admin)
    client(d, plain).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": f"Say {SECRET_WORD}"}], max_tokens=4
    )
    logged_name, logged = new_key(d, admin, log_content=True)
    word = SECRET_WORD.upper()
    out = client(d, logged).chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "user", "content": f"Say {word}"}],
        max_tokens=4,
        stream=True,
    )
    answer = "".join((c.choices[0].delta.content or "") for c in out.parse() if c.choices)
    rid = out.headers["x-request-id"]
    rows = db_rows(db, "SELECT key, prompt, answer FROM content WHERE request_id = ?", rid)
    assert len(rows) == 1 and rows[0][0] == logged_name
    assert word in rows[0][1] and rows[0][2] == answer
    # The plain key's prompt is nowhere in the database files.
    data = b"".join(p.read_bytes() for p in db.parent.glob("usage.db*"))
    assert SECRET_WORD.encode() not in data


def test_purge_and_audit_cli(usage_daemon: tuple[Daemon, str]) -> None:
    d, admin = usage_daemon
    config = str(d.log.parent / "llmd.toml")
    name, secret = new_key(d, admin)
    client(d, secret).completions.create(model="smollm2", prompt="Hi", max_tokens=1)
    cli = [sys.executable, "-m", "llmd"]
    listed = subprocess.run(
        [*cli, "usage", "--key", name, "--format", "csv", "--config", config],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed.count(name) == 1
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    out = subprocess.run(
        [*cli, "usage", "purge", "--before", tomorrow, "--key", name, "--config", config],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("deleted 1 usage record(s)")
    rows = httpx.get(
        d.url + "/api/v1/usage", params={"key": name}, headers=bearer(admin), timeout=10
    ).json()["data"]
    assert rows == []
    audit = subprocess.run(
        [*cli, "audit", "--format", "json", "--config", config],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"action": "usage.purged"' in audit and f'"target": "{name}"' in audit
    # The audit table is append-only, even for someone with the database file.
    conn = sqlite3.connect(d.log.parent / "usage.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()


def test_sigkill_after_responses_loses_no_record(tmp_path: Path) -> None:
    _, secret = add_key(tmp_path / "keys.toml", "k")
    d = start_daemon(tmp_path, CONFIG)
    c = client(d, secret)
    ids: list[str] = []
    tokens = 0
    for i in range(6):
        if i % 2:
            raw = c.completions.with_raw_response.create(
                model="smollm2",
                prompt="Hello",
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            last = list(raw.parse())[-1]
            assert last.usage is not None
            tokens += last.usage.total_tokens
        else:
            raw = c.completions.with_raw_response.create(
                model="smollm2", prompt="Hello", max_tokens=3
            )
            usage = raw.parse().usage
            assert usage is not None
            tokens += usage.total_tokens
        ids.append(raw.headers["x-request-id"])
    d.proc.send_signal(signal.SIGKILL)  # right after the last response: no clean shutdown
    d.proc.wait(30)
    rows = db_rows(
        tmp_path / "usage.db",
        "SELECT request_id, prompt_tokens + completion_tokens FROM usage WHERE key = 'k'",
    )
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert sum(r[1] for r in rows) == tokens


def _wait(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unwritable_database(tmp_path: Path, mode: str) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the database directory should be")
    config = CONFIG + f'[usage]\ndatabase = "state/usage.db"\non_db_failure = "{mode}"\n'
    d = start_daemon(tmp_path, config)
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 2}
    try:
        # The audit records of the start-up (the model loaded) already find the store broken.
        _wait(lambda: "cannot be written" in d.logs())
        first = httpx.post(d.url + "/v1/completions", json=body, timeout=60)
        second = httpx.post(d.url + "/v1/completions", json=body, timeout=60)
        if mode == "open":
            assert first.status_code == second.status_code == 200  # records wait in memory
        else:
            for refused in (first, second):
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "usage_store_unavailable"
                assert "Retry-After" in refused.headers
        served = [first, second] if mode == "open" else []
        # The disk is back: the backlog is written, nothing was lost.
        blocker.unlink()
        _wait(lambda: (tmp_path / "state" / "usage.db").exists() and "writable again" in d.logs())
        rows = db_rows(tmp_path / "state" / "usage.db", "SELECT request_id, status FROM usage")
        assert {r.headers["x-request-id"] for r in served} <= {r[0] for r in rows}
        if mode == "closed":
            assert (second.headers["x-request-id"], 503) in rows
            assert httpx.post(d.url + "/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        assert d.stop() == 0, d.logs()


def test_unwritten_records_are_not_lost_silently_at_exit(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    d = start_daemon(tmp_path, CONFIG + '[usage]\ndatabase = "state/usage.db"\n')
    resp = httpx.post(d.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60)
    assert resp.status_code == 200
    assert d.stop() == 0
    assert "unwritten usage record" in d.logs()
    assert resp.headers["x-request-id"] in d.logs()
