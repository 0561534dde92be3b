"""The console benchmark's usage database (bench/console.py): rows the daemon's own readers
take, spread over the last 30 days, both models, keyed and unkeyed, a few errors."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bench.console import MODEL_NAMES, make_usage
from llmd.usage.store import connect


def test_the_usage_database_is_filled_with_realistic_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    make_usage(path, 2_000)
    connect(path).close()  # the daemon opens it as it is: the schema is its own
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM usage").fetchone() == (2_000,)
        first, last = db.execute("SELECT min(time), max(time) FROM usage").fetchone()
        now = time.time()
        assert now - 31 * 86400 < first < last <= now
        models = {m for (m,) in db.execute("SELECT DISTINCT model FROM usage")}
        assert models == set(MODEL_NAMES)
        keys = db.execute("SELECT count(DISTINCT key), sum(key IS NULL) FROM usage").fetchone()
        assert keys[0] == 20 and keys[1] > 0
        errors = db.execute("SELECT count(*) FROM usage WHERE status != 200").fetchone()[0]
        assert 0 < errors < 200
        assert db.execute(
            "SELECT count(*) FROM usage WHERE status = 200 AND prompt_tokens = 0"
        ).fetchone() == (0,)
