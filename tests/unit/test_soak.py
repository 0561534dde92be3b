"""The soak test's judgement (bench/soakstats.py, bench/soakclient.py) on made-up data: usage
rows set against what the clients saw, the quarter medians, the error shape, the fault plan."""

from __future__ import annotations

from typing import Any

from bench.soak import _times
from bench.soakclient import error_shape
from bench.soakstats import Outcome, flatness, log_errors, outcomes_summary, reconcile


def _row(rid: str, key: str, status: int = 200, tokens: tuple[int, int] = (5, 7)) -> dict[str, Any]:
    return {
        "request_id": rid,
        "key": key,
        "status": status,
        "error": None,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
    }


def _ok(rid: str, key: str, status: int | None = 200, result: str = "ok") -> Outcome:
    return Outcome(rid, key, "chat", 0.0, status=status, result=result, prompt_tokens=5,
                   completion_tokens=7)  # fmt: skip


def test_rows_matching_every_answer_reconcile() -> None:
    outcomes = [_ok("a1", "a"), _ok("a2", "a"), _ok("b1", "b", 429, "refused")]
    rows = [_row("a1", "a"), _row("a2", "a"), _row("b1", "b", 429)]
    rec = reconcile(outcomes, rows)
    assert rec.per_key["a"] == {"answered": 2, "rows": 2, "rows_of_answered": 2, "equal": 1}
    assert rec.per_key["b"]["equal"] == 1
    assert not rec.missing and not rec.extra and not rec.duplicates and not rec.status_differs
    assert rec.tokens_checked == 2 and not rec.token_mismatches


def test_a_lost_row_a_duplicate_a_stray_row_and_wrong_tokens_are_each_told() -> None:
    outcomes = [_ok("a1", "a"), _ok("a2", "a"), _ok("a3", "a", None, "hang"), _ok("b1", "b")]
    rows = [
        _row("a1", "a", tokens=(5, 8)),  # tokens differ from the answer's usage
        _row("a3", "a"),  # the client got no status: a stray row
        _row("b1", "b", 499),
        _row("b1", "b", 499),
    ]
    rec = reconcile(outcomes, rows)
    assert rec.missing == ["a2"]
    assert rec.extra == ["a3"]
    assert rec.duplicates == ["b1"]
    assert rec.per_key["a"] == {"answered": 2, "rows": 2, "rows_of_answered": 1, "equal": 0}
    assert rec.per_key["b"]["equal"] == 0  # one answer, two rows
    assert rec.status_differs == {"200 -> 499 (ok)": 1}
    assert rec.token_mismatches == [{"request_id": "a1", "client": (5, 7), "row": (5, 8)}]


def _sample(t: float, rss: int, fds: int, models: int = 1) -> dict[str, Any]:
    proc = {"pid": 1, "rss": rss, "fds": fds, "threads": 3, "status": "running"}
    return {
        "t": t,
        "health_ms": 1.0,
        "current": [1],
        "daemon": proc,
        "models": [dict(proc)] * models,
    }


def test_flatness_compares_the_first_and_last_quarter_medians() -> None:
    samples = [_sample(t, 100 + (50 if t >= 75 else 0), 10) for t in range(0, 101, 5)]
    f = flatness(samples)
    assert f["daemon.rss"]["q1_median"] == 100 and f["daemon.rss"]["q4_median"] == 150
    assert f["daemon.rss"]["q4_over_q1"] == 1.5
    assert f["daemon.fds"]["q4_over_q1"] == 1.0
    assert f["models.count"]["q1_median"] == 1


def test_zombie_model_processes_are_counted_apart() -> None:
    s = _sample(0, 100, 10, models=2)
    s["models"][1] = {**s["models"][1], "pid": 2, "status": "zombie"}
    f = flatness([s, {**s, "t": 10}])
    assert f["models.count"]["q1_median"] == 1 and f["models.zombies"]["q1_median"] == 1


def test_the_serving_process_is_told_from_a_spare_or_a_draining_one() -> None:
    s = _sample(0, 100, 10, models=2)
    s["models"][1] = {**s["models"][1], "pid": 2, "rss": 40}
    f = flatness([s, {**s, "t": 10}])
    assert f["current.rss"]["q1_median"] == 100 and f["models.rss"]["q1_median"] == 140


def test_log_errors_counts_error_lines_and_what_ended_each_traceback() -> None:
    log = "\n".join(
        [
            "2026-11-29T21:54:21.727Z ERROR llmd.engine model m: exited with status -9",
            "2026-11-29T21:54:22.000Z INFO llmd.api fine",
            "2026-11-29T21:54:45.296Z ERROR aiohttp.server Error handling request",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "    raise X",
            "ConnectionResetError: Cannot write to closing transport",
            "2026-11-29T21:55:21.727Z ERROR llmd.engine model m: exited with status -9",
        ]
    )
    assert log_errors(log) == {
        "ERROR llmd.engine model m: exited with status -9": 2,
        "ERROR aiohttp.server Error handling request": 1,
        "traceback: ConnectionResetError: Cannot write to closing transport": 1,
    }


def test_only_unclean_and_hung_requests_are_listed_as_not_clean() -> None:
    outcomes = [_ok("a1", "a"), _ok("a2", "a", 503, "refused"), _ok("a3", "a", None, "hang")]
    summary = outcomes_summary(outcomes)
    assert summary["by_result"] == {"ok": 1, "refused": 1, "hang": 1}
    assert [bad["request_id"] for bad in summary["not_clean"]] == ["a3"]


def test_error_shape_is_openais() -> None:
    good = {"error": {"message": "m", "type": "server_error", "code": "model_crashed"}}
    assert error_shape(good) == "model_crashed"
    assert error_shape({"error": {"message": "m", "type": "invalid_request_error"}}) == (
        "invalid_request_error"
    )
    assert error_shape({"error": "text"}) is None
    assert error_shape({"detail": "x"}) is None
    assert error_shape([1]) is None


def test_fault_times_stay_before_the_end() -> None:
    assert _times(60, 1.0, 200) == [60, 120, 180]
    assert _times(100, 0.5, 200) == [50, 150]
    assert _times(0, 1.0, 200) == []
