"""Bounded listings of the usage database: pages of usage records, of usage totals and of the
audit log, and CSV exports that stream every matching row.

A page holds at most MAX_LIMIT rows: a larger `limit`, or one below 1, is refused (a
`ListingError` naming `limit`, a 400 in the API), as OpenAI's list endpoints refuse theirs.
Rows come newest first unless `order` is "asc", in OpenAI's list shape (`data`, `first_id`,
`last_id`, `has_more`); `after` (the last id of a page) gives the next page, `before` (the first
id) the previous one. Pages are keyset queries: usage records on (time, id), which both usage
indexes end with, audit entries on id, so a page deep in a million rows costs what the first
does. Totals (`group_by`) are one page of groups, ordered by the group columns.

An export (`export_csv`) walks the same keyset EXPORT_CHUNK rows at a time, each chunk its own
statement: memory stays one chunk whatever the table holds, and no read transaction stays open
across the export (the writer's WAL checkpoints go on). Everything here blocks on SQLite: the
API calls it in a thread (asyncio.to_thread), one chunk per call.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmd.usage.store import AUDIT_COLUMNS, USAGE_COLUMNS

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
EXPORT_CHUNK = 1000
ORDERS = ("desc", "asc")
Chunks = Generator[bytes, None, None]
"""An export: CSV bytes, a chunk per `next`; `close` ends it early (and closes its connection)."""


class ListingError(ValueError):
    """A listing asked for wrongly; `param` names the parameter, `code` is OpenAI's when it
    has one."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    keyset: tuple[str, ...]
    """The order of the list and its cursor: columns that are unique together, id last."""


USAGE = Table("usage", ("id", *USAGE_COLUMNS), ("time", "id"))
AUDIT = Table("audit", ("id", *AUDIT_COLUMNS), ("id",))


@dataclass
class Filters:
    """WHERE clauses (ANDed) and their arguments."""

    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, clause: str, *args: Any) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    def sql(self, extra: Sequence[str] = ()) -> str:
        clauses = [*self.clauses, *extra]
        return (" WHERE " + " AND ".join(clauses)) if clauses else ""


@dataclass
class UsageQuery:
    key: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None
    group_by: list[str] = field(default_factory=list)

    def filters(self) -> Filters:
        f = Filters()
        for column, value in (("key", self.key), ("model", self.model)):
            if value is not None:
                f.add(f"{column} = ?", value)
        if self.since is not None:
            f.add("time >= ?", self.since)
        if self.until is not None:
            f.add("time < ?", self.until)
        return f


@dataclass
class AuditQuery:
    since: float | None = None
    until: float | None = None
    actor: str | None = None

    def filters(self) -> Filters:
        f = Filters()
        if self.since is not None:
            f.add("time >= ?", self.since)
        if self.until is not None:
            f.add("time < ?", self.until)
        if self.actor is not None:
            f.add("actor = ?", self.actor)
        return f


@dataclass
class Paging:
    """Which slice of a list: `limit` rows (None: DEFAULT_LIMIT for a page, all for an export)
    after or before a row's id, in `order`."""

    limit: int | None = None
    after: int | None = None
    before: int | None = None
    order: str = "desc"

    def check(self, export: bool = False) -> None:
        if self.limit is not None:
            if self.limit < 1:
                raise ListingError(
                    f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but "
                    f"got {self.limit} instead.",
                    "limit",
                    "integer_below_min_value",
                )
            if self.limit > MAX_LIMIT:
                raise ListingError(
                    f"Invalid 'limit': integer above maximum value. Expected a value <= "
                    f"{MAX_LIMIT}, but got {self.limit} instead. Page with 'after', or export "
                    "every row with format=csv.",
                    "limit",
                    "integer_above_max_value",
                )
        if self.order not in ORDERS:
            raise ListingError(f"Invalid 'order': use {' or '.join(ORDERS)}.", "order")
        for name, row_id in (("after", self.after), ("before", self.before)):
            if row_id is not None and not 0 <= row_id < 2**63:  # SQLite's integer ids
                raise ListingError(f"Invalid '{name}': no row has id {row_id}.", name)
        if self.after is not None and self.before is not None:
            raise ListingError("Give 'after' or 'before', not both.", "before")
        if export and self.before is not None:
            raise ListingError("An export runs forward: start it with 'after'.", "before")


@dataclass
class Page:
    data: list[dict[str, Any]]
    has_more: bool

    def body(self) -> dict[str, Any]:
        """OpenAI's list object (ids are null for totals, which have none)."""
        ids = [row.get("id") for row in self.data]
        return {
            "object": "list",
            "data": self.data,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
            "has_more": self.has_more,
        }


GROUPS = {
    "day": "strftime('%Y-%m-%d', time, 'unixepoch')",
    "key": "key",
    "model": "model",
}
SUMS = (
    ("requests", "COUNT(*)"),
    ("errors", "SUM(status >= 400)"),
    ("prompt_tokens", "SUM(prompt_tokens)"),
    ("cached_tokens", "SUM(cached_tokens)"),
    ("completion_tokens", "SUM(completion_tokens)"),
    ("total_tokens", "SUM(prompt_tokens + completion_tokens)"),
    ("avg_latency_ms", "ROUND(AVG(latency_ms), 3)"),
    ("cache_hits", "SUM(cache IS 'hit')"),
)
"""The columns of a totals row after its group columns: (name, SQL)."""


# -- pages ------------------------------------------------------------------------------------


def page(path: Path, table: Table, filters: Filters, paging: Paging) -> Page:
    """One page of `table`'s rows (audit details decoded from their JSON)."""
    paging.check()
    limit = paging.limit or DEFAULT_LIMIT
    if not path.exists():
        return Page([], False)
    with _reader(path) as conn:
        backwards = paging.before is not None
        cursor = _cursor(conn, table, paging.before if backwards else paging.after, paging)
        # `before` reads back from the cursor, then turns the rows round into list order.
        desc = (paging.order == "desc") != backwards
        rows = _scan(conn, table, filters, cursor, desc, limit + 1)
    has_more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    if table is AUDIT:
        for row in rows:
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
    return Page(rows, has_more)


def totals(path: Path, q: UsageQuery, paging: Paging) -> Page:
    """One page of usage totals per group of `q.group_by`, ordered by the group columns."""
    paging.check()
    if paging.after is not None or paging.before is not None:
        raise ListingError("Totals (group_by) are one page: narrow them with since/until.", "after")
    limit = paging.limit or DEFAULT_LIMIT
    if not path.exists():
        return Page([], False)
    sql = _totals_sql(q, paging.order) + f" LIMIT {limit + 1}"
    with _reader(path) as conn:
        rows = [dict(row) for row in conn.execute(sql, q.filters().args)]
    return Page(rows[:limit], len(rows) > limit)


# -- exports ----------------------------------------------------------------------------------


def export_csv(path: Path, table: Table, filters: Filters, paging: Paging) -> Chunks:
    """Every matching row as CSV (UTF-8), the header first, then EXPORT_CHUNK rows at a time,
    in list order from `paging.after`; at most `paging.limit` rows when it is set. Nothing is
    read until the first chunk is asked for: a bad cursor raises there, before any output."""
    paging.check(export=True)
    remaining = paging.limit
    header = _csv_lines([table.columns])
    if not path.exists():
        yield header
        return
    with _reader(path) as conn:
        cursor = _cursor(conn, table, paging.after, paging)
        yield header
        desc = paging.order == "desc"
        while remaining is None or remaining > 0:
            size = EXPORT_CHUNK if remaining is None else min(EXPORT_CHUNK, remaining)
            # One whole statement per chunk: its read transaction ends with it.
            rows = _scan(conn, table, filters, cursor, desc, size)
            if not rows:
                return
            yield _csv_lines(tuple(row.values()) for row in rows)
            if remaining is not None:
                remaining -= len(rows)
            cursor = tuple(rows[-1][column] for column in table.keyset)


def export_totals_csv(path: Path, q: UsageQuery, paging: Paging) -> Chunks:
    """Every group's totals as CSV, EXPORT_CHUNK groups at a time (at most `paging.limit`).
    One statement: SQLite has grouped every row before the first group comes out anyway, and
    there are far fewer groups than records."""
    paging.check(export=True)
    if paging.after is not None:
        raise ListingError(
            "Totals (group_by) take no cursor: narrow them with since/until.", "after"
        )
    sql = _totals_sql(q, paging.order)
    if paging.limit is not None:
        sql += f" LIMIT {paging.limit}"
    if not path.exists():
        yield _csv_lines([(*q.group_by, *(name for name, _ in SUMS))])
        return
    with _reader(path) as conn:
        result = conn.execute(sql, q.filters().args)
        yield _csv_lines([tuple(d[0] for d in result.description)])
        while rows := result.fetchmany(EXPORT_CHUNK):
            yield _csv_lines(tuple(row) for row in rows)


# -- the queries ------------------------------------------------------------------------------


def _reader(path: Path) -> closing[sqlite3.Connection]:
    """A connection of its own for one listing (never the writer's), closed at the end; rows
    read as dicts. An export's generator moves between threads: one at a time is all it asks."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return closing(conn)


def _cursor(
    conn: sqlite3.Connection, table: Table, row_id: int | None, paging: Paging
) -> tuple[Any, ...] | None:
    """The keyset values of the row a cursor names; a cursor naming no row is an error (it
    was purged, or never existed): the client would otherwise get a silently empty page."""
    if row_id is None:
        return None
    sql = f"SELECT {', '.join(table.keyset)} FROM {table.name} WHERE id = ?"
    row = conn.execute(sql, (row_id,)).fetchone()
    if row is None:
        param = "before" if paging.before is not None else "after"
        raise ListingError(f"No {table.name} row with id {row_id}.", param)
    return tuple(row)


def _scan(
    conn: sqlite3.Connection,
    table: Table,
    filters: Filters,
    cursor: tuple[Any, ...] | None,
    desc: bool,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` rows past `cursor`, walking the keyset down (`desc`) or up."""
    keys = ", ".join(table.keyset)
    extra: list[str] = []
    args = list(filters.args)
    if cursor is not None:
        extra.append(f"({keys}) {'<' if desc else '>'} ({', '.join('?' * len(cursor))})")
        args.extend(cursor)
    direction = " DESC" if desc else ""
    order = ", ".join(column + direction for column in table.keyset)
    sql = (
        f"SELECT {', '.join(table.columns)} FROM {table.name}{filters.sql(extra)} "
        f"ORDER BY {order} LIMIT {int(limit)}"
    )
    return [dict(row) for row in conn.execute(sql, args)]


def _totals_sql(q: UsageQuery, order: str) -> str:
    for group in q.group_by:
        if group not in GROUPS:
            raise ListingError(f"group_by {group!r}: use day, key or model", "group_by")
    if not q.group_by:
        raise ListingError("group_by: name day, key or model", "group_by")
    cols = ", ".join(
        [f"{GROUPS[g]} AS {g}" for g in q.group_by] + [f"{sql} AS {name}" for name, sql in SUMS]
    )
    direction = " DESC" if order == "desc" else ""
    by = ", ".join(q.group_by)
    sorted_by = ", ".join(g + direction for g in q.group_by)
    return f"SELECT {cols} FROM usage{q.filters().sql()} GROUP BY {by} ORDER BY {sorted_by}"


def _csv_lines(rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()
