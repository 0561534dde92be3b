"""Per-key limits: requests and tokens per minute, concurrency, tokens per calendar month.

Windows slide over the last 60 s. Tokens (prompt + completion) are charged when a request
ends, so a request is admitted while the key is under its limits and the one that crosses a
limit still finishes (a stream is never cut): the next request is refused with 429 and a
Retry-After saying when the window (or the month) frees up. The clock is injectable, for
month-boundary tests; monthly totals start from the usage database.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmd.auth.keys import KeyRecord
from llmd.errors import APIError

WINDOW_S = 60.0


class RateLimited(APIError):
    status = 429
    type = "requests"

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code, retry_after=max(1, retry_after))
        self.type = "insufficient_quota" if code == "insufficient_quota" else "requests"


def month_start(when: float) -> float:
    day = dt.datetime.fromtimestamp(when, dt.UTC)
    return dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC).timestamp()


def next_month_start(when: float) -> float:
    day = dt.datetime.fromtimestamp(when, dt.UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()


@dataclass
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    tokens_sum: int = 0
    inflight: int = 0
    month: float = 0.0
    month_tokens: int = 0

    def prune(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.tokens_sum -= self.tokens.popleft()[1]
        if now >= next_month_start(self.month):
            self.month, self.month_tokens = month_start(now), 0


def _duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset format: 1s, 6m0s, 1h2m3s."""
    seconds = max(0, math.ceil(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


class Limiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._state: dict[str, _KeyState] = {}

    def set_month_totals(self, totals: dict[str, int], month: float) -> None:
        """Tokens each key used this month before the daemon started (from the database)."""
        for name, tokens in totals.items():
            state = self._get(name)
            if state.month == month:
                state.month_tokens += tokens

    def _get(self, name: str) -> _KeyState:
        state = self._state.get(name)
        if state is None:
            state = self._state[name] = _KeyState(month=month_start(self.clock()))
        return state

    def admit(self, name: str, rec: KeyRecord) -> None:
        """Count one request in, or raise RateLimited (429) naming the limit."""
        now = self.clock()
        st = self._get(name)
        st.prune(now)
        if rec.monthly_tokens is not None and st.month_tokens >= rec.monthly_tokens:
            raise RateLimited(
                f"You exceeded your monthly quota of {rec.monthly_tokens} tokens for key "
                f"'{name}' ({st.month_tokens} used). It renews at the start of next month (UTC).",
                code="insufficient_quota",
                retry_after=math.ceil(next_month_start(now) - now),
            )
        if rec.concurrency is not None and st.inflight >= rec.concurrency:
            raise RateLimited(
                f"Rate limit reached for key '{name}': {rec.concurrency} concurrent requests. "
                "Wait for one to finish.",
                code="rate_limit_exceeded",
                retry_after=1,
            )
        if rec.rpm is not None and len(st.requests) >= rec.rpm:
            raise RateLimited(
                f"Rate limit reached for key '{name}' on requests per min (RPM): "
                f"Limit {rec.rpm}, Used {len(st.requests)}.",
                code="rate_limit_exceeded",
                retry_after=math.ceil(st.requests[0] + WINDOW_S - now),
            )
        if rec.tpm is not None and st.tokens_sum >= rec.tpm:
            raise RateLimited(
                f"Rate limit reached for key '{name}' on tokens per min (TPM): "
                f"Limit {rec.tpm}, Used {st.tokens_sum}.",
                code="rate_limit_exceeded",
                retry_after=math.ceil(self._tokens_free_at(st, rec.tpm) - now),
            )
        st.requests.append(now)
        st.inflight += 1

    def release(self, name: str, tokens: int) -> None:
        """An admitted request ended: free its concurrency slot, charge its tokens."""
        now = self.clock()
        st = self._get(name)
        st.prune(now)
        st.inflight = max(0, st.inflight - 1)
        if tokens > 0:
            st.tokens.append((now, tokens))
            st.tokens_sum += tokens
            st.month_tokens += tokens

    def month_tokens(self, name: str) -> int:
        st = self._get(name)
        st.prune(self.clock())
        return st.month_tokens

    @staticmethod
    def _tokens_free_at(st: _KeyState, tpm: int) -> float:
        """When enough charged tokens leave the window for the sum to drop under the limit."""
        total = st.tokens_sum
        for when, tokens in st.tokens:
            total -= tokens
            if total < tpm:
                return when + WINDOW_S
        return 0.0

    def headers(self, name: str, rec: KeyRecord) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the limits this key has."""
        now = self.clock()
        st = self._get(name)
        st.prune(now)
        out: dict[str, str] = {}
        if rec.rpm is not None:
            reset = st.requests[0] + WINDOW_S - now if st.requests else 0.0
            out["x-ratelimit-limit-requests"] = str(rec.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, rec.rpm - len(st.requests)))
            out["x-ratelimit-reset-requests"] = _duration(reset)
        if rec.tpm is not None:
            reset = st.tokens[0][0] + WINDOW_S - now if st.tokens else 0.0
            out["x-ratelimit-limit-tokens"] = str(rec.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, rec.tpm - st.tokens_sum))
            out["x-ratelimit-reset-tokens"] = _duration(reset)
        return out
