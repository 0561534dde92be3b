"""Stored Responses (llmd/usage/responses.py) on real SQLite and in memory, on a clock of the
test's own: save / load / delete, key scoping, retention, the size bound, and what the
data-deletion commands (`llmd usage purge`, `llmd keys revoke`) delete and report."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmd import cli
from llmd.auth.keys import add_key
from llmd.usage import responses as r
from llmd.usage.responses import ResponseStore, ResponseTooLarge, StoredResponse
from llmd.usage.store import UsageStore, purge
from tests.unit.test_usage_listing import usage_row
from tests.unit.test_usage_store import Clock

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY = 86400


def stored(rid: str, key: str | None, created: float, text: str = "Hello") -> StoredResponse:
    item = {"id": f"msg_{rid}", "type": "message", "role": "user", "content": []}
    out = {"id": f"out_{rid}", "type": "message", "role": "assistant", "content": [text]}
    return StoredResponse(
        id=rid,
        key=key,
        created=created,
        model="smollm2",
        body={"id": rid, "object": "response", "output": [out], "text": text},
        input_items=[item],
        conversation=[item, out],
    )


def run_on(
    tmp_path: Path,
    test: Callable[[ResponseStore, Clock], Awaitable[None]],
    *,
    database: bool,
    retention_days: float = 30.0,
    memory_max_chars: int = r.MEMORY_MAX_CHARS,
) -> None:
    """`test` on a ResponseStore over a started usage writer (`database`), or in memory."""
    clock = Clock(T0)

    async def main() -> None:
        usage = None
        if database:
            usage = UsageStore(
                tmp_path / "usage.db", responses_retention_days=retention_days, clock=clock
            )
            usage.start()
        store = ResponseStore(usage, retention_days, clock, memory_max_chars)
        try:
            await test(store, clock)
        finally:
            if usage is not None:
                usage.close()

    asyncio.run(main())


@pytest.mark.parametrize("database", [True, False], ids=["sqlite", "memory"])
def test_save_load_delete_scoped_to_the_key(tmp_path: Path, database: bool) -> None:
    async def test(store: ResponseStore, clock: Clock) -> None:
        alice = stored("resp_a", "alice", clock.now, "héllo ✓")
        anonymous = stored("resp_n", None, clock.now)
        await store.save(alice)
        await store.save(anonymous)
        assert await store.load("resp_a", "alice") == alice  # unicode and all, as sent
        assert await store.load("resp_n", None) == anonymous
        # Another key's id, a key's id without a key and the other way round: not found.
        assert await store.load("resp_a", "bob") is None
        assert await store.load("resp_a", None) is None
        assert await store.load("resp_n", "alice") is None
        assert await store.load("resp_unknown", "alice") is None
        assert not await store.delete("resp_a", "bob")
        assert not await store.delete("resp_a", None)
        assert not await store.delete("resp_n", "alice")
        assert await store.load("resp_a", "alice") == alice  # the refused deletes left it
        assert await store.delete("resp_a", "alice")
        assert await store.load("resp_a", "alice") is None
        assert not await store.delete("resp_a", "alice")  # deleted once only
        assert await store.load("resp_n", None) == anonymous

    run_on(tmp_path, test, database=database)


def test_a_save_is_committed_when_it_returns(tmp_path: Path) -> None:
    async def test(store: ResponseStore, clock: Clock) -> None:
        await store.save(stored("resp_1", "alice", clock.now))
        # Another connection (another process, the next request's thread) sees it at once.
        conn = sqlite3.connect(tmp_path / "usage.db")
        rows = conn.execute("SELECT id, key, model, body FROM responses").fetchall()
        conn.close()
        assert [(i, k, m) for i, k, m, _ in rows] == [("resp_1", "alice", "smollm2")]
        assert json.loads(rows[0][3])["object"] == "response"

    run_on(tmp_path, test, database=True)


@pytest.mark.parametrize("database", [True, False], ids=["sqlite", "memory"])
def test_expired_responses_are_never_returned(tmp_path: Path, database: bool) -> None:
    async def test(store: ResponseStore, clock: Clock) -> None:
        await store.save(stored("resp_old", "k", clock.now - 8 * DAY))
        await store.save(stored("resp_new", "k", clock.now - 6 * DAY))
        assert await store.load("resp_old", "k") is None
        assert not await store.delete("resp_old", "k")
        assert await store.load("resp_new", "k") is not None
        clock.now += 2 * DAY
        assert await store.load("resp_new", "k") is None

    run_on(tmp_path, test, database=database, retention_days=7)


def test_the_writers_retention_pass_deletes_expired_rows(tmp_path: Path) -> None:
    clock = Clock(T0)
    usage = UsageStore(tmp_path / "usage.db", responses_retention_days=7, clock=clock)
    usage.start()
    for rid, age in (("resp_old", 8), ("resp_new", 6)):
        usage.put("responses", r.encode_row(stored(rid, "k", clock.now - age * DAY)))
    usage.close()
    # The writer expires them on its own (once it has a connection, then hourly).
    conn = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    assert [row[0] for row in conn.execute("SELECT id FROM responses")] == ["resp_new"]
    clock.now += 2 * DAY
    assert usage.expire_responses(conn) == 1
    assert conn.execute("SELECT COUNT(*) FROM responses").fetchone() == (0,)
    conn.close()


@pytest.mark.parametrize("database", [True, False], ids=["sqlite", "memory"])
def test_a_response_over_the_bound_is_refused_naming_store(
    tmp_path: Path, database: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(r, "MAX_STORED_CHARS", 1000)

    async def test(store: ResponseStore, clock: Clock) -> None:
        await store.save(stored("resp_small", "k", clock.now, "x" * 100))
        with pytest.raises(ResponseTooLarge) as info:
            await store.save(stored("resp_big", "k", clock.now, "x" * 1000))
        assert info.value.status == 400 and info.value.param == "store"
        assert await store.load("resp_big", "k") is None
        assert await store.load("resp_small", "k") is not None

    run_on(tmp_path, test, database=database)


def test_in_memory_the_oldest_go_first_past_the_bound(tmp_path: Path) -> None:
    size = sum(len(part) for part in r.encode_row(stored("resp_0", "k", 0))[4:])

    async def test(store: ResponseStore, clock: Clock) -> None:
        for n in range(5):
            await store.save(stored(f"resp_{n}", "k", clock.now))
        found = [n for n in range(5) if await store.load(f"resp_{n}", "k") is not None]
        assert found == [2, 3, 4]

    run_on(tmp_path, test, database=False, memory_max_chars=3 * size + 1)


@pytest.mark.parametrize("database", [True, False], ids=["sqlite", "memory"])
def test_forgetting_a_key_deletes_only_its_responses(tmp_path: Path, database: bool) -> None:
    async def test(store: ResponseStore, clock: Clock) -> None:
        for rid, key in (("resp_1", "alice"), ("resp_2", "alice"), ("resp_3", "bob")):
            await store.save(stored(rid, key, clock.now))
        assert await store.forget_key("alice") == 2
        assert await store.load("resp_1", "alice") is None
        assert await store.load("resp_3", "bob") is not None
        assert await store.forget_key("alice") == 0

    run_on(tmp_path, test, database=database)


def fill_responses(path: Path, rows: list[tuple[str, str, float]]) -> None:
    """Stored responses, each with a usage record of its key at the same time."""
    usage = UsageStore(path, clock=Clock(T0))  # the writer's retention pass runs on T0
    usage.start()
    for rid, key, when in rows:
        usage.put("responses", r.encode_row(stored(rid, key, when)))
        usage.put("usage", usage_row(when, 3, key=key))
    usage.close()


def ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in conn.execute("SELECT id FROM responses"))
    finally:
        conn.close()


def test_purge_deletes_stored_responses_and_counts_them(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    t = T0.timestamp()
    old = t - 3 * DAY
    fill_responses(db, [("resp_1", "alice", old), ("resp_2", "bob", old), ("resp_3", "alice", t)])
    by_key = purge(db, t - DAY, "alice")
    assert (by_key.records, by_key.responses) == (1, 1)
    assert ids(db) == ["resp_2", "resp_3"]
    everyone = purge(db, t + 1)
    assert (everyone.records, everyone.responses) == (2, 2)
    assert ids(db) == []


def config_for(tmp_path: Path) -> Path:
    path = tmp_path / "llmd.toml"
    path.write_text(
        f'models_dir = "{tmp_path}"\n'
        f'[usage]\ndatabase = "{tmp_path / "usage.db"}"\n'
        f'[auth]\nkeys_file = "{tmp_path / "keys.toml"}"\n'
    )
    return path


def test_the_cli_purge_says_how_many_responses_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path)
    t = T0.timestamp()
    fill_responses(tmp_path / "usage.db", [("resp_1", "alice", t), ("resp_2", "bob", t)])
    before = (T0 + dt.timedelta(days=1)).date().isoformat()
    argv = ["usage", "purge", "--before", before, "--key", "alice", "--config", str(config)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out == f"deleted 1 usage record(s) and 1 stored response(s) before {before}\n"
    assert ids(tmp_path / "usage.db") == ["resp_2"]
    audit = _audit(tmp_path / "usage.db")
    assert audit[-1][0] == "usage.purged" and audit[-1][1] == "alice"
    assert json.loads(audit[-1][2]) == {"before": before, "records": 1, "responses": 1}


def test_revoking_a_key_in_the_cli_deletes_its_stored_responses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path)
    add_key(tmp_path / "keys.toml", "alice")
    t = T0.timestamp()
    fill_responses(
        tmp_path / "usage.db",
        [("resp_1", "alice", t), ("resp_2", "alice", t - DAY), ("resp_3", "bob", t)],
    )
    assert cli.main(["keys", "revoke", "alice", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "key 'alice' revoked; 2 stored response(s) deleted\n"
    assert ids(tmp_path / "usage.db") == ["resp_3"]
    audit = _audit(tmp_path / "usage.db")
    assert audit[-1][:2] == ("key.revoked", "alice")
    assert json.loads(audit[-1][2]) == {"responses": 2}


def _audit(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT action, target, detail FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()
