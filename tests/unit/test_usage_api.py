"""The usage and audit API through the app in-process (tests/unit/app_harness.py), on a real
SQLite file: the 400s of a bad listing, OpenAI's list shape, and a CSV export of 50,000 records
that arrives whole while the event loop goes on serving."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmd.usage import listing as ls
from tests.unit.app_harness import Harness, error_of, json_of, serve
from tests.unit.fake_process import until
from tests.unit.test_usage_listing import T0, fill, usage_row

USAGE_ON = {"usage.enabled": True}


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("limit=-1", "limit", "integer_below_min_value"),
        ("limit=0", "limit", "integer_below_min_value"),
        ("limit=1001", "limit", "integer_above_max_value"),
        ("limit=-1&format=csv", "limit", "integer_below_min_value"),
        ("limit=many", "limit", "invalid_type"),
        ("after=1.5", "after", "invalid_type"),
        ("limit=%EF%BC%95", "limit", "invalid_type"),  # a full-width 5
        ("after=99999999999999999999", "after", None),
        ("before=-1", "before", None),
        ("after=999999", "after", None),
        ("after=999999&format=csv", "after", None),
        ("before=3&format=csv", "before", None),
        ("after=1&before=3", "before", None),
        ("order=newest", "order", None),
        ("format=xml", "format", None),
        ("since=yesterday", "since", None),
        ("until=nan", "until", None),
        ("group_by=colour", "group_by", None),
        ("group_by=colour&format=csv", "group_by", None),
        ("group_by=day&after=3", "after", None),
    ],
)
def test_bad_listings_are_400s_naming_the_parameter(
    tmp_path: Path, query: str, param: str, code: str | None
) -> None:
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n) for n in range(5)])

    async def test(h: Harness) -> None:
        resp = await h.get("/api/v1/usage?" + query)
        await error_of(resp, 400, param=param, code=code, type_="invalid_request_error")
        if not query.startswith("group_by"):
            await error_of(await h.get("/api/v1/audit?" + query), 400, param=param)

    serve(tmp_path, test, config=USAGE_ON)


def test_pages_in_openai_list_shape(tmp_path: Path) -> None:
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n) for n in range(1500)])

    async def test(h: Harness) -> None:
        first = await json_of(await h.get("/api/v1/usage"))
        assert set(first) == {"object", "data", "first_id", "last_id", "has_more"}
        ids = [row["id"] for row in first["data"]]
        assert ids == list(range(1500, 1400, -1)) and first["has_more"]  # 100, newest first
        assert (first["first_id"], first["last_id"]) == (1500, 1401)
        full = await json_of(await h.get(f"/api/v1/usage?limit=1000&after={first['last_id']}"))
        assert [row["id"] for row in full["data"]] == list(range(1400, 400, -1))
        assert full["has_more"]
        last = await json_of(await h.get("/api/v1/usage?limit=1000&after=401"))
        assert len(last["data"]) == 400 and not last["has_more"]
        oldest = await json_of(await h.get("/api/v1/usage?order=asc&limit=2"))
        assert [row["id"] for row in oldest["data"]] == [1, 2]
        back = await json_of(await h.get("/api/v1/usage?limit=2&before=1401"))
        assert [row["id"] for row in back["data"]] == [1403, 1402]
        audit = await json_of(await h.get("/api/v1/audit"))
        assert audit["object"] == "list" and not audit["has_more"]

    serve(tmp_path, test, config=USAGE_ON)


def test_csv_export_streams_every_row_while_the_loop_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 50_000
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n, key="ab"[n % 2]) for n in range(count)])
    # The export stops inside its fourth read until the test lets it go on. Reads run in a
    # thread: /health must be answered meanwhile. Were they run on the event loop, the loop
    # would stand still here and /health could not answer.
    produced: list[int] = []
    gate = threading.Event()
    real = ls.export_csv

    def gated(*args: Any) -> Iterator[bytes]:
        for chunk in real(*args):
            produced.append(chunk.count(b"\n"))
            if len(produced) == 4:
                assert gate.wait(60), "the test never let the export go on"
            yield chunk

    monkeypatch.setattr(ls, "export_csv", gated)

    async def test(h: Harness) -> None:
        try:
            resp = await h.get("/api/v1/usage?format=csv")
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert resp.headers["Transfer-Encoding"] == "chunked"  # streamed, no length known
            await until(lambda: len(produced) == 4, "the export's fourth read")
            assert (await json_of(await h.get("/health"))) == {"status": "ok"}
            # Answered mid-export: the export is still parked in its fourth read.
            assert len(produced) == 4
        finally:
            gate.set()
        body = (await resp.read()).decode()
        rows = list(csv.DictReader(io.StringIO(body)))
        assert len(rows) == count
        assert [int(r["id"]) for r in rows] == list(range(count, 0, -1))
        assert rows[0]["request_id"] == f"r{count - 1}" and rows[-1]["key"] == "a"
        # The header, then chunks of at most EXPORT_CHUNK rows: never the table at once.
        assert produced[0] == 1 and max(produced[1:]) == ls.EXPORT_CHUNK
        assert sum(produced) == count + 1
        # Filters apply to an export as to a page.
        only_b = await h.get("/api/v1/usage?format=csv&key=b&limit=3&order=asc")
        lines = (await only_b.text()).splitlines()
        assert [line.split(",")[0] for line in lines] == ["id", "2", "4", "6"]

    serve(tmp_path, test, config=USAGE_ON)


def test_a_client_that_leaves_midway_ends_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n) for n in range(50_000)])
    gate = threading.Event()
    ended: list[str] = []
    real = ls.export_csv

    def watched(*args: Any) -> Iterator[bytes]:
        try:
            for n, chunk in enumerate(real(*args)):
                if n == 4:
                    assert gate.wait(60), "the test never let the export go on"
                yield chunk
            ended.append("finished")
        except GeneratorExit:
            ended.append("closed")  # and with it the export's SQLite connection
            raise

    monkeypatch.setattr(ls, "export_csv", watched)

    async def test(h: Harness) -> None:
        try:
            resp = await h.get("/api/v1/usage?format=csv")
            assert (await resp.content.readany()).startswith(b"id,time,")
            resp.close()  # gone, with 49,000 rows still to come
        finally:
            gate.set()
        await until(lambda: bool(ended), "the export to end")
        assert ended == ["closed"]
        assert (await json_of(await h.get("/health"))) == {"status": "ok"}

    serve(tmp_path, test, config=USAGE_ON)


def test_an_export_that_fails_midway_is_cut_short_not_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n) for n in range(3000)])
    real = ls.export_csv

    def failing(*args: Any) -> Iterator[bytes]:
        for n, chunk in enumerate(real(*args)):
            if n == 2:
                raise sqlite3.OperationalError("disk I/O error")
            yield chunk

    monkeypatch.setattr(ls, "export_csv", failing)

    async def test(h: Harness) -> None:
        resp = await h.get("/api/v1/usage?format=csv")
        assert resp.status == 200
        # A client must not mistake the first rows for the whole export.
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert (await json_of(await h.get("/health"))) == {"status": "ok"}

    serve(tmp_path, test, config=USAGE_ON)
    assert "usage export cut short" in caplog.text
