"""The last hour by minute (llmd/server/activity.py): the ring of buckets on a fake clock
(what a minute counts, the current minute's rate, an hour-old bucket started again), and
`GET /api/v1/activity` in the app (client requests counted, the console's own calls not, an
admin path like any other)."""

from __future__ import annotations

from pathlib import Path

from llmd.auth.keys import add_key
from llmd.record import RequestRecord
from llmd.server.activity import MINUTES, Activity
from tests.unit.app_harness import HI, Harness, error_of, json_of, keys_file, serve


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    path: str = "/v1/chat/completions", status: int = 200, **fields: object
) -> RequestRecord:
    r = RequestRecord(
        request_id="r", method="POST", path=path, endpoint=path, client="127.0.0.1",
        started=0.0, started_wall=0.0, status=status,
    )  # fmt: skip
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def test_a_minute_counts_its_client_requests_and_their_tokens() -> None:
    clock = Clock(6000.0 * 60 + 30)  # half way through minute 6000
    activity = Activity(clock)
    activity.observe(record(completion_tokens=12, prompt_tokens=5))
    activity.observe(record(status=429))
    activity.observe(record(completion_tokens=100, cache="hit"))  # generated nothing
    activity.observe(record(path="/api/v1/models", method="GET"))  # the console's own call
    activity.observe(record(path="/ui/app.js", method="GET"))
    series = activity.series()
    minutes = series["minutes"]
    assert isinstance(minutes, list) and len(minutes) == MINUTES
    last = minutes[-1]
    assert last["start"] == 6000 * 60
    assert (last["requests"], last["errors"]) == (3, 1)
    assert (last["prompt_tokens"], last["completion_tokens"]) == (5, 12)
    # 12 tokens in the 30 s of the minute that have passed.
    assert last["output_tokens_per_s"] == 0.4
    assert all(m["requests"] == 0 for m in minutes[:-1])
    assert [m["start"] for m in minutes] == [(5941 + i) * 60 for i in range(MINUTES)]


def test_earlier_minutes_are_over_their_whole_60_s_and_an_hour_old_one_is_forgotten() -> None:
    clock = Clock(100 * 60 + 5)
    activity = Activity(clock)
    activity.observe(record(completion_tokens=120))
    clock.now += 60
    activity.observe(record(completion_tokens=6))
    minutes = activity.series()["minutes"]
    assert isinstance(minutes, list)
    assert (minutes[-2]["completion_tokens"], minutes[-2]["output_tokens_per_s"]) == (120, 2.0)
    assert minutes[-1]["completion_tokens"] == 6
    # An hour later minute 100's bucket is minute 160's: its old counts are not shown...
    clock.now += 59 * 60
    minutes = activity.series()["minutes"]
    assert isinstance(minutes, list)
    assert minutes[-1]["start"] == 160 * 60 and minutes[-1]["requests"] == 0
    assert minutes[0]["start"] == 101 * 60 and minutes[0]["completion_tokens"] == 6
    # ...and a request then starts the bucket again rather than adding to minute 100's.
    activity.observe(record(completion_tokens=1))
    minutes = activity.series()["minutes"]
    assert isinstance(minutes, list)
    assert (minutes[-1]["requests"], minutes[-1]["completion_tokens"]) == (1, 1)


def test_the_route_counts_client_requests_and_not_its_own(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await json_of(await h.post("/v1/chat/completions", {"messages": HI}))
        await h.record_of("/v1/chat/completions")
        await json_of(await h.get("/api/v1/health"))
        await h.record_of("/api/v1/health")
        body = await json_of(await h.get("/api/v1/activity"))
        assert body["object"] == "activity" and len(body["minutes"]) == MINUTES
        assert sum(m["requests"] for m in body["minutes"]) == 1
        # The fake model answers "Hello", ",", " world", "!".
        assert sum(m["completion_tokens"] for m in body["minutes"]) == 4

    serve(tmp_path, test)


def test_the_route_is_an_admin_route(tmp_path: Path) -> None:
    admin = add_key(keys_file(tmp_path), "root", admin=True)[1]
    user = add_key(keys_file(tmp_path), "alice")[1]

    async def test(h: Harness) -> None:
        await error_of(await h.get("/api/v1/activity"), 401)
        resp = await h.get("/api/v1/activity", {"Authorization": f"Bearer {user}"})
        await error_of(resp, 403, code="admin_key_required")
        resp = await h.get("/api/v1/activity", {"Authorization": f"Bearer {admin}"})
        await json_of(resp)

    serve(tmp_path, test)
