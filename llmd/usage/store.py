"""Usage records, stored prompt/answer text and the audit log, in one SQLite file.

The event loop never touches SQLite for writing: rows go on a queue, and one writer thread
commits them in groups (WAL mode; a commit is in the OS before the response ends, so a
SIGKILL after a response loses nothing). When the file cannot be written (permissions, full
disk) the rows stay in memory and are retried every second; `healthy` says so, and the
daemon keeps serving or refuses new requests according to `usage.on_db_failure`. Rows still
unwritten at exit go to a JSON-lines file next to the database (or to the log): never lost
silently. Reads (the API, the CLI) open their own connection in a thread; the bounded
listings and CSV exports are in listing.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("llmd.usage")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    key TEXT,
    model TEXT,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    ttft_ms REAL,
    latency_ms REAL,
    client TEXT,
    cache TEXT
);
CREATE INDEX IF NOT EXISTS usage_time ON usage (time);
CREATE INDEX IF NOT EXISTS usage_key_time ON usage (key, time);
CREATE TABLE IF NOT EXISTS content (
    request_id TEXT NOT NULL,
    time REAL NOT NULL,
    key TEXT,
    prompt TEXT,
    answer TEXT
);
CREATE INDEX IF NOT EXISTS content_time ON content (time);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    client TEXT,
    detail TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_u BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_d BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    key TEXT,
    model TEXT NOT NULL,
    body TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_time ON responses (time);
CREATE INDEX IF NOT EXISTS responses_key ON responses (key);
"""

USAGE_COLUMNS = (
    "time",
    "request_id",
    "key",
    "model",
    "endpoint",
    "status",
    "error",
    "stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "client",
    "cache",
)
AUDIT_COLUMNS = ("time", "actor", "action", "target", "client", "detail")
_INSERT = {
    "usage": f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(USAGE_COLUMNS))})",
    "content": "INSERT INTO content (request_id, time, key, prompt, answer) VALUES (?,?,?,?,?)",
    "audit": f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}) VALUES (?,?,?,?,?,?)",
    # A stored response (llmd/usage/responses.py); ids are the server's own, never reused.
    "responses": "INSERT OR REPLACE INTO responses "
    "(id, time, key, model, body, input_items, conversation) VALUES (?,?,?,?,?,?,?)",
}


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the schema in place: WAL, and commits that survive a killed process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL: a commit is written to the WAL (the OS has it: a SIGKILL loses nothing); only
    # a power cut can lose the last commits. FULL would fsync every group, for little.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    if "cache" not in columns:  # a database from before the response cache
        conn.execute("ALTER TABLE usage ADD COLUMN cache TEXT")
    return conn


@dataclass
class _Item:
    table: str
    row: tuple[Any, ...]
    done: Callable[[], None] | None = None


@dataclass
class UsageStore:
    path: Path
    buffer_max: int = 100_000
    retention_days: float = 30.0
    responses_retention_days: float = 30.0
    clock: Callable[[], float] = time.time
    healthy: bool = True
    error: str | None = None
    _queue: queue.SimpleQueue[_Item | None] = field(default_factory=queue.SimpleQueue)
    _pending: list[_Item] = field(default_factory=list)
    _thread: threading.Thread | None = None

    # -- writing -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Rows waiting for the database (only grows while it is unwritable)."""
        return len(self._pending) + self._queue.qsize()

    @property
    def full(self) -> bool:
        return self.backlog >= self.buffer_max

    def put(self, table: str, row: tuple[Any, ...], done: Callable[[], None] | None = None) -> None:
        """Queue one row; `done` is called (in the writer thread) once it is committed, or once
        it is safely buffered because the database is failing. A usage row from before the
        newest columns (a saved unwritten file) is written with them empty."""
        if table == "usage" and len(row) < len(USAGE_COLUMNS):
            row = row + (None,) * (len(USAGE_COLUMNS) - len(row))
        self._queue.put(_Item(table, row, done))

    async def put_and_wait(self, table: str, row: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        self.put(table, row, done)
        await fut

    def close(self) -> None:
        """Write what is left (stop the thread); rows that still cannot be written are saved to
        a JSON-lines file beside the database, or logged, so that none is lost silently."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None
        if self._pending:
            self._spill()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        last_retention = 0.0
        stopping = False
        while True:
            try:
                item = self._queue.get(timeout=1.0 if self._pending else 60.0)
            except queue.Empty:
                item = _Item("", ())  # a tick: retry the backlog, run retention
            batch: list[_Item] = []
            while True:
                if item is None:
                    stopping = True
                elif item.table:
                    batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._pending.extend(batch)
            if self._pending:
                try:
                    if conn is None:
                        conn = connect(self.path)
                    self._write(conn, self._pending)
                    written, self._pending = self._pending, []
                    if not self.healthy:
                        log.warning("usage database %s writable again: backlog written", self.path)
                    self.healthy, self.error = True, None
                    for done_item in written:
                        if done_item.done is not None:
                            done_item.done()
                except (sqlite3.Error, OSError) as exc:
                    if conn is not None:
                        _close_quietly(conn)
                        conn = None
                    if self.healthy or str(exc) != self.error:
                        log.error(
                            "usage database %s cannot be written (%s): %d record(s) kept in "
                            "memory, retrying",
                            self.path,
                            exc,
                            len(self._pending),
                        )
                    self.healthy, self.error = False, str(exc)
                    for done_item in batch:  # buffered: the response need not wait for the disk
                        if done_item.done is not None:
                            done_item.done()
            if conn is not None and self.clock() - last_retention > 3600:
                last_retention = self.clock()
                try:
                    self.expire_content(conn)
                    self.expire_responses(conn)
                except sqlite3.Error as exc:
                    log.error("usage database: retention failed: %s", exc)
            if stopping:
                if conn is not None:
                    _close_quietly(conn)
                return

    def _write(self, conn: sqlite3.Connection, items: list[_Item]) -> None:
        conn.execute("BEGIN")
        try:
            for item in items:
                conn.execute(_INSERT[item.table], item.row)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def expire_content(self, conn: sqlite3.Connection) -> int:
        cutoff = self.clock() - self.retention_days * 86400
        cur = conn.execute("DELETE FROM content WHERE time < ?", (cutoff,))
        if cur.rowcount:
            log.info("deleted %d stored prompt/answer record(s) past retention", cur.rowcount)
        return int(cur.rowcount)

    def expire_responses(self, conn: sqlite3.Connection) -> int:
        """Stored responses past `responses_retention_days` (reads never return them anyway)."""
        cutoff = self.clock() - self.responses_retention_days * 86400
        cur = conn.execute("DELETE FROM responses WHERE time < ?", (cutoff,))
        if cur.rowcount:
            log.info("deleted %d stored response(s) past retention", cur.rowcount)
        return int(cur.rowcount)

    def _spill(self) -> None:
        target = self.path.with_name(self.path.name + ".unwritten.jsonl")
        lines = [json.dumps({"table": i.table, "row": list(i.row)}) for i in self._pending]
        try:
            with target.open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
            log.error(
                "usage database %s unwritable at exit: %d record(s) saved to %s",
                self.path,
                len(lines),
                target,
            )
        except OSError:
            log.error("usage database unwritable at exit; the %d record(s):", len(lines))
            for line in lines:
                log.error("unwritten usage record: %s", line)
        self._pending = []


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


# -- reading (listings are in listing.py; from the event loop, run these in a thread) ---------


def parse_time(value: str, end: bool = False) -> float:
    """Unix seconds from a date (YYYY-MM-DD: its start, or with `end` its end), an ISO time or a
    number. Dates and times without a zone are UTC."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # NaN compares with nothing: a silently empty list
            raise ValueError(f"{value!r} is not a time")
        return seconds
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            if end:
                day += dt.timedelta(days=1)
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD), ISO time or unix time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def totals_since(path: Path, since: float, count_hits: bool = False) -> dict[str, int]:
    """Tokens (prompt + completion) per key since a time: the monthly quotas' starting point.
    Answers from the response cache count only when `count_hits` (cache.count_hit_tokens)."""
    hits = "" if count_hits else " AND cache IS NOT 'hit'"
    sql = (
        "SELECT key, SUM(prompt_tokens + completion_tokens) AS tokens FROM usage "
        f"WHERE time >= ? AND key IS NOT NULL{hits} GROUP BY key"
    )
    return {row["key"]: int(row["tokens"] or 0) for row in _select(path, sql, [since])}


@dataclass
class Purged:
    """What a purge deleted: usage records (their stored text with them) and stored responses."""

    records: int
    responses: int


def purge(path: Path, before: float, key: str | None = None) -> Purged:
    """Delete usage records, stored text and stored responses older than `before` (of one key,
    or of all); how many records and responses went."""
    conn = connect(path)
    try:
        args: list[Any] = [before] if key is None else [before, key]
        extra = "" if key is None else " AND key = ?"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM content WHERE time < ?{extra}", args)
        count = conn.execute(f"DELETE FROM usage WHERE time < ?{extra}", args).rowcount
        responses = conn.execute(f"DELETE FROM responses WHERE time < ?{extra}", args).rowcount
        conn.execute("COMMIT")
        return Purged(int(count), int(responses))
    finally:
        conn.close()


def write_audit_now(path: Path, row: tuple[Any, ...]) -> None:
    """For the CLI: one audit entry (an `audit_row`), committed before returning."""
    conn = connect(path)
    try:
        conn.execute(_INSERT["audit"], row)
    finally:
        conn.close()


def audit_row(
    actor: str,
    action: str,
    target: str | None,
    client: str | None,
    detail: dict[str, Any] | None,
    now: float | None = None,
) -> tuple[Any, ...]:
    """One audit log entry as the database stores it; the daemon queues it for the writer
    (usage.recorder.Audit), the CLI writes it at once (`write_audit_now`)."""
    return (
        now if now is not None else time.time(),
        actor,
        action,
        target,
        client,
        json.dumps(detail, default=str) if detail else None,
    )


def _select(path: Path, sql: str, args: Iterable[Any]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, list(args))]
    finally:
        conn.close()
