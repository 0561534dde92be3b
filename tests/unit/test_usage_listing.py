"""Bounded listings of the usage database (llmd/usage/listing.py) on real SQLite: pages newest
first, walked with `after` and back with `before`, `has_more`, the cap on `limit`, totals, and
CSV exports that hold every matching row, read a chunk at a time."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from llmd.usage import listing as ls
from llmd.usage.store import UsageStore, audit_row

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


def usage_row(when: float, n: int, key: str = "k", model: str = "m") -> tuple[Any, ...]:
    return (when, f"r{n}", key, model, "/v1/completions", 200, None, 0, n, 0, 1, 1.0, 2.0, "", None)


def fill(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Rows into the usage table through the store's writer, as the daemon writes them."""
    store = UsageStore(path)
    store.start()
    for row in rows:
        store.put("usage", row)
    store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """25 records whose times do not follow their ids (a long request is written after
    shorter ones that started later) and collide in threes: the order must still be total."""
    path = tmp_path / "usage.db"
    fill(path, [usage_row(T0 + (n * 7) % 25 // 3, n, key="ab"[n % 2]) for n in range(25)])
    return path


def expected(path: Path, desc: bool = True, key: str | None = None) -> list[int]:
    """Ids in list order, worked out here from the rows themselves."""
    rows = ls.page(path, ls.USAGE, ls.Filters(), ls.Paging(limit=ls.MAX_LIMIT)).data
    chosen = [r for r in rows if key is None or r["key"] == key]
    chosen.sort(key=lambda r: (r["time"], r["id"]), reverse=desc)
    return [r["id"] for r in chosen]


def walk(path: Path, paging: ls.Paging, filters: ls.Filters | None = None) -> list[list[int]]:
    """Every page, following `after` from the first one."""
    pages = []
    while True:
        page = ls.page(path, ls.USAGE, filters or ls.Filters(), paging)
        pages.append([row["id"] for row in page.data])
        body = page.body()
        assert body["object"] == "list"
        assert body["first_id"] == (pages[-1][0] if pages[-1] else None)
        assert body["last_id"] == (pages[-1][-1] if pages[-1] else None)
        if not page.has_more:
            return pages
        paging = ls.Paging(limit=paging.limit, after=body["last_id"], order=paging.order)


def test_pages_are_newest_first_and_cover_every_row_once(db: Path) -> None:
    first = ls.page(db, ls.USAGE, ls.Filters(), ls.Paging())
    times = [row["time"] for row in first.data]
    assert times == sorted(times, reverse=True) and len(first.data) == 25
    assert not first.has_more
    order = expected(db)
    pages = walk(db, ls.Paging(limit=4))
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 4, 1]
    assert sum(pages, []) == order
    # has_more is exact: 25 rows in pages of 5 are five pages, not five and an empty one.
    assert [len(p) for p in walk(db, ls.Paging(limit=5))] == [5] * 5


def test_ascending_order_and_filters(db: Path) -> None:
    assert sum(walk(db, ls.Paging(limit=3, order="asc")), []) == expected(db, desc=False)
    only_a = ls.UsageQuery(key="a").filters()
    pages = walk(db, ls.Paging(limit=5), only_a)
    assert sum(pages, []) == expected(db, key="a") and len(sum(pages, [])) == 13


def test_before_gives_the_previous_page(db: Path) -> None:
    order = expected(db)
    second = ls.page(db, ls.USAGE, ls.Filters(), ls.Paging(limit=4, after=order[3]))
    assert [r["id"] for r in second.data] == order[4:8]
    back = ls.page(db, ls.USAGE, ls.Filters(), ls.Paging(limit=4, before=order[4]))
    assert [r["id"] for r in back.data] == order[:4] and not back.has_more
    back = ls.page(db, ls.USAGE, ls.Filters(), ls.Paging(limit=3, before=order[4]))
    assert [r["id"] for r in back.data] == order[1:4] and back.has_more


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        (0, "integer_below_min_value"),
        (-1, "integer_below_min_value"),
        (1001, "integer_above_max_value"),
    ],
)
def test_limit_is_capped(db: Path, limit: int, code: str) -> None:
    with pytest.raises(ls.ListingError) as info:
        ls.page(db, ls.USAGE, ls.Filters(), ls.Paging(limit=limit))
    assert info.value.param == "limit" and info.value.code == code
    with pytest.raises(ls.ListingError):
        next(ls.export_csv(db, ls.USAGE, ls.Filters(), ls.Paging(limit=limit)))


def test_a_full_page_is_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    fill(path, [usage_row(T0 + n, n) for n in range(ls.MAX_LIMIT + 5)])
    page = ls.page(path, ls.USAGE, ls.Filters(), ls.Paging(limit=ls.MAX_LIMIT))
    assert len(page.data) == ls.MAX_LIMIT and page.has_more
    assert len(ls.page(path, ls.USAGE, ls.Filters(), ls.Paging()).data) == ls.DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("paging", "param"),
    [
        (ls.Paging(after=999), "after"),
        (ls.Paging(before=999), "before"),
        (ls.Paging(after=1, before=2), "before"),
        (ls.Paging(order="newest"), "order"),
    ],
)
def test_bad_cursors_and_orders(db: Path, paging: ls.Paging, param: str) -> None:
    with pytest.raises(ls.ListingError) as info:
        ls.page(db, ls.USAGE, ls.Filters(), paging)
    assert info.value.param == param


def read_csv(chunks: list[bytes]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))


def test_export_holds_every_row_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ls, "EXPORT_CHUNK", 7)
    path = tmp_path / "usage.db"
    fill(path, [usage_row(T0 + n // 4, n, key="ab"[n % 2]) for n in range(100)])
    chunks = list(ls.export_csv(path, ls.USAGE, ls.Filters(), ls.Paging()))
    # A header, then ceil(100 / 7) chunks of at most 7 rows: never the table at once.
    assert len(chunks) == 1 + 15
    assert all(c.count(b"\n") <= 7 for c in chunks[1:])
    rows = read_csv(chunks)
    assert [int(r["id"]) for r in rows] == expected(path)
    assert rows[0].keys() == {"id", *ls.USAGE.columns}
    assert rows[-1]["request_id"] == "r0" and rows[-1]["prompt_tokens"] == "0"
    # Filters, order, a start and a limit apply as to pages.
    order = expected(path, desc=False, key="b")
    chunks = list(
        ls.export_csv(
            path,
            ls.USAGE,
            ls.UsageQuery(key="b").filters(),
            ls.Paging(order="asc", after=order[9], limit=20),
        )
    )
    assert [int(r["id"]) for r in read_csv(chunks)] == order[10:30]


def test_export_of_nothing_is_a_header(tmp_path: Path) -> None:
    header = b"id," + ",".join(ls.USAGE.columns[1:]).encode() + b"\n"
    assert list(ls.export_csv(tmp_path / "none.db", ls.USAGE, ls.Filters(), ls.Paging())) == [
        header
    ]
    fill(tmp_path / "usage.db", [usage_row(T0, 1, key="a")])
    nobody = ls.UsageQuery(key="b").filters()
    chunks = ls.export_csv(tmp_path / "usage.db", ls.USAGE, nobody, ls.Paging())
    assert b"".join(chunks) == header
    with pytest.raises(ls.ListingError) as info:  # a cursor, when given, must name a row
        next(ls.export_csv(tmp_path / "usage.db", ls.USAGE, nobody, ls.Paging(after=9)))
    assert info.value.param == "after"


def test_totals_are_one_bounded_page(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    day = 86400
    fill(path, [usage_row(T0 + (n % 5) * day, n, key="ab"[n % 2]) for n in range(50)])
    q = ls.UsageQuery(group_by=["day", "key"])
    page = ls.totals(path, q, ls.Paging(limit=4))
    assert page.has_more and page.body()["first_id"] is None
    assert [(r["day"], r["key"]) for r in page.data] == [
        ("2026-01-05", "b"),
        ("2026-01-05", "a"),
        ("2026-01-04", "b"),
        ("2026-01-04", "a"),
    ]
    every = ls.totals(path, q, ls.Paging(order="asc"))
    assert not every.has_more and len(every.data) == 10
    assert sum(r["requests"] for r in every.data) == 50
    assert sum(r["prompt_tokens"] for r in every.data) == sum(range(50))
    rows = read_csv(list(ls.export_totals_csv(path, q, ls.Paging(order="asc"))))
    assert [r["requests"] for r in rows] == [str(r["requests"]) for r in every.data]
    with pytest.raises(ls.ListingError) as info:
        ls.totals(path, ls.UsageQuery(group_by=["colour"]), ls.Paging())
    assert info.value.param == "group_by"
    with pytest.raises(ls.ListingError) as info:
        ls.totals(path, q, ls.Paging(after=3))
    assert info.value.param == "after"


def test_audit_pages_and_export(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store = UsageStore(path)
    store.start()
    for n in range(5):
        store.put("audit", audit_row("cli:me", "key.added", f"k{n}", "local", {"n": n}, T0 + n))
    store.close()
    page = ls.page(path, ls.AUDIT, ls.AuditQuery(actor="cli:me").filters(), ls.Paging(limit=2))
    assert [r["target"] for r in page.data] == ["k4", "k3"] and page.has_more
    assert page.data[0]["detail"] == {"n": 4}
    rows = read_csv(list(ls.export_csv(path, ls.AUDIT, ls.Filters(), ls.Paging(order="asc"))))
    assert [json.loads(r["detail"]) for r in rows] == [{"n": n} for n in range(5)]
