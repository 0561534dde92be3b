"""The last hour's activity, minute by minute: `GET /api/v1/activity` (admin, as every /api/v1
path but health), for the console's live chart.

`Activity.observe` is a request observer (`app[OBSERVERS]`): each finished client request
(`/v1/*`) adds to the bucket of the minute it ended in, in a ring of 60 per-minute buckets.
The console's own polling (`/api/v1/*`, `/ui/*`) is not counted: watching the chart must not
draw on it. Nothing is stored: a restart starts an empty hour, which the usage database
(`/api/v1/usage`) does not replace, since its finest total is a day."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from llmd.record import OBSERVERS, RequestRecord

MINUTES = 60


@dataclass
class Bucket:
    """The requests that ended in one minute."""

    minute: int = -1
    """Unix time // 60 of the minute these counts are of (-1: never used)."""
    requests: int = 0
    errors: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0


class Activity:
    """A ring of per-minute buckets over the last hour; `clock` gives unix seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ring = [Bucket() for _ in range(MINUTES)]

    def observe(self, record: RequestRecord) -> None:
        """Request observer: count a finished client request (O(1), on the event loop)."""
        if not record.path.startswith("/v1/"):
            return
        minute = int(self.clock() // 60)
        bucket = self.ring[minute % MINUTES]
        if bucket.minute != minute:  # an hour old, or never used: start it again
            bucket.minute, bucket.requests, bucket.errors = minute, 0, 0
            bucket.completion_tokens = bucket.prompt_tokens = 0
        bucket.requests += 1
        bucket.errors += record.status >= 400
        if record.cache != "hit":  # an answer from the cache generated nothing
            bucket.completion_tokens += record.completion_tokens
            bucket.prompt_tokens += record.prompt_tokens

    def series(self) -> dict[str, object]:
        """The last 60 minutes, oldest first, the current (partial) minute last."""
        now = self.clock()
        last = int(now // 60)
        minutes = []
        for minute in range(last - MINUTES + 1, last + 1):
            bucket = self.ring[minute % MINUTES]
            fresh = bucket.minute == minute
            tokens = bucket.completion_tokens if fresh else 0
            # The current minute has run only part of its 60 s: its rate is over that part.
            seconds = (now - minute * 60) if minute == last else 60.0
            minutes.append(
                {
                    "start": minute * 60,
                    "requests": bucket.requests if fresh else 0,
                    "errors": bucket.errors if fresh else 0,
                    "prompt_tokens": bucket.prompt_tokens if fresh else 0,
                    "completion_tokens": tokens,
                    "output_tokens_per_s": round(tokens / max(seconds, 1.0), 3),
                }
            )
        return {"object": "activity", "now": round(now, 3), "minutes": minutes}

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response(self.series())


ACTIVITY = web.AppKey("activity", Activity)


def add_routes(app: web.Application) -> None:
    """`GET /api/v1/activity`, fed by an observer of every request record."""
    app[ACTIVITY] = activity = Activity()
    app[OBSERVERS].append(activity.observe)
    app.router.add_get("/api/v1/activity", activity.handle)
