"""The usage store (llmd/usage/store.py) on a clock of the test's own, on real SQLite: the month's
totals the limiter (llmd/auth/limits.py) reads back across a month boundary, and the retention
of stored content."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from pathlib import Path

import pytest

from llmd.auth.limits import Limiter, RateLimited, month_start
from llmd.usage import listing as ls
from llmd.usage.store import UsageStore, totals_since


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def _record(store: UsageStore, when: float, key: str, tokens: int) -> None:
    row = (
        when,
        uuid.uuid4().hex,
        key,
        "m",
        "/v1/completions",
        200,
        None,
        0,
        tokens,
        0,
        0,
        1,
        2,
        "",
    )
    store.put("usage", row)


def test_monthly_quota_across_a_month_boundary(tmp_path: Path) -> None:
    from llmd.auth.keys import KeyRecord

    clock = Clock(dt.datetime(2026, 1, 31, 23, 58, tzinfo=dt.UTC))
    store = UsageStore(tmp_path / "usage.db", clock=clock)
    store.start()
    _record(store, clock.now - 86400, "alice", 60)  # January, in the database already
    store.close()
    rec = KeyRecord(id="0" * 12, hash="x", monthly_tokens=100)
    # The daemon starts on Jan 31: January's 60 tokens count.
    limiter = Limiter(clock)
    month = month_start(clock.now)
    limiter.set_month_totals(totals_since(store.path, month), month)
    limiter.admit("alice", rec)
    limiter.release("alice", 50)  # 110 of 100: this request finished anyway
    with pytest.raises(RateLimited) as info:
        limiter.admit("alice", rec)
    assert info.value.code == "insufficient_quota"
    assert info.value.retry_after == 120  # until 2026-02-01T00:00Z
    # February: a new quota, whether the daemon kept running...
    clock.now = dt.datetime(2026, 2, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp()
    limiter.admit("alice", rec)
    # ...or restarted and read the totals back from the database.
    restarted = Limiter(clock)
    february = month_start(clock.now)
    restarted.set_month_totals(totals_since(store.path, february), february)
    assert restarted.month_tokens("alice") == 0
    restarted.admit("alice", rec)


def test_content_retention(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    store = UsageStore(tmp_path / "usage.db", retention_days=7, clock=clock)
    store.start()
    store.put("content", ("old", clock.now - 8 * 86400, "k", "p", "a"))
    store.put("content", ("new", clock.now - 6 * 86400, "k", "p", "a"))
    _record(store, clock.now - 8 * 86400, "k", 5)
    store.close()
    # The writer thread expires stored text on its own (at start, then hourly).
    conn = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    assert [r[0] for r in conn.execute("SELECT request_id FROM content")] == ["new"]
    clock.now += 2 * 86400
    assert store.expire_content(conn) == 1
    assert conn.execute("SELECT COUNT(*) FROM content").fetchone() == (0,)
    conn.close()
    # The usage record itself stays (only the text expires).
    assert (
        len(ls.page(store.path, ls.USAGE, ls.UsageQuery(key="k").filters(), ls.Paging()).data) == 1
    )
