"""The Redis backend of the response cache: entries in a Redis that several daemons share.

Each entry is one string key, `llmd:cache:{scope}:{key}`, set with the TTL as PX, so Redis
expires it by itself and its own `maxmemory` policy bounds the whole (llmd sets no byte bound
here). A scope is cleared by SCAN MATCH over its prefix and UNLINK in batches, which never
blocks Redis the way KEYS or a big DEL would.

Calls fail fast while Redis is down: connect and read are bounded by `timeout_s` and a
failed command is retried once, at once (a pooled connection that a restarted Redis closed),
never with a backoff; the caller (front.py) rests the backend and answers without the cache.
The client's pool reconnects by itself on the next call once Redis is back. The URL may
carry a password: it is never put in a message, an exception or a log line.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from llmd.cache.store import StoreStats

PREFIX = "llmd:cache:"
BATCH = 500
"""Keys per SCAN step and per UNLINK: small enough that no single command holds Redis up."""


class RedisStoreError(Exception):
    """A Redis call failed; the message names what failed, never the URL's password.
    `unreachable`: Redis could not be reached (down, slow); else it answered with an error
    (a write refused at maxmemory), which says nothing about the next read."""

    def __init__(self, message: str, unreachable: bool = True) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, @rest) read as plain text, not by a URL parser, so that a
    password a parser would misread (a '/' or '#' not percent-encoded) is still found."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return None
    return scheme + sep, rest[:at], rest[at:]


def safe_url(url: str) -> str:
    """The URL with its password (in the userinfo or a `password=` query item) masked."""
    split = _split_userinfo(url)
    if split is not None:
        head, userinfo, rest = split
        user, colon, _ = userinfo.partition(":")
        url = f"{head}{user}:***{rest}" if colon else url
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _secrets(url: str) -> list[str]:
    """The password as it may appear in a message: as written and as decoded."""
    found = re.findall(r"(?i)[?&]password=([^&#]*)", url)
    split = _split_userinfo(url)
    if split is not None and ":" in split[1]:
        found.append(split[1].partition(":")[2])
    return sorted({s for s in (*found, *map(unquote, found)) if s}, key=len, reverse=True)


def _glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisStore:
    """Entries in Redis at `url`; every call bounded by `timeout_s` while connecting or
    reading, and raising RedisStoreError when Redis cannot be used."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = safe_url(url)
        self._secrets = _secrets(url)
        self._client: Redis | None = None
        self._broken: str | None = None
        try:
            self._client = Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                # One immediate retry: a pooled connection a restarted Redis closed is
                # replaced on the spot; a Redis that is down fails within the timeouts.
                retry=Retry(NoBackoff(), 1),
                # Redis' own client name in CLIENT LIST, for an operator sharing one Redis.
                client_name="llmd-cache",
            )
        except (ValueError, TypeError, RedisError) as exc:
            # A URL Redis cannot use fails every call (counted by the front) instead of the
            # daemon or the request that first asked for the cache. The parser's message is
            # left out: on a misread URL it may quote a piece of the password.
            self._broken = (
                f"redis_url cannot be used ({type(exc).__name__}; a password holding "
                "'/', '@', ':', '#' or '%' is to be percent-encoded)"
            )

    def _clean(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def _redis(self) -> Redis:
        if self._client is None:
            raise RedisStoreError(f"redis at {self.url}: {self._broken}")
        return self._client

    def _fail(self, exc: Exception) -> RedisStoreError:
        message = self._clean(str(exc) or type(exc).__name__)
        unreachable = isinstance(exc, OSError | RedisConnectionError | RedisTimeoutError)
        return RedisStoreError(f"redis at {self.url}: {message}", unreachable)

    @staticmethod
    def _name(scope: str, key: str) -> str:
        return f"{PREFIX}{scope}:{key}"

    async def get_many(self, scope: str, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found: list[Any] = await self._redis().mget([self._name(scope, k) for k in keys])
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from None
        return [None if v is None else bytes(v) for v in found]

    async def put(self, scope: str, key: str, value: bytes, ttl_s: float | None) -> None:
        # PX in whole milliseconds, at least 1: a TTL below a millisecond still expires.
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        try:
            await self._redis().set(self._name(scope, key), value, px=px)
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from None

    async def _scan(self, pattern: str) -> AsyncIterator[list[bytes]]:
        """The names matching `pattern`, a batch at a time."""
        client = self._redis()
        cursor: int = 0
        while True:
            cursor, names = await client.scan(cursor, match=pattern, count=BATCH)
            if names:
                yield list(names)
            if cursor == 0:
                return

    async def clear(self, scope: str | None = None) -> int:
        pattern = PREFIX + "*" if scope is None else f"{PREFIX}{_glob_escape(scope)}:*"
        gone = 0
        try:
            async for names in self._scan(pattern):
                for at in range(0, len(names), BATCH):
                    gone += int(await self._redis().unlink(*names[at : at + BATCH]))
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from None
        return gone

    async def stats(self, count: bool = True) -> StoreStats:
        try:
            entries: int | None = None
            if count:  # a SCAN of every entry: for the operator, not for each metrics scrape
                entries = 0
                async for names in self._scan(PREFIX + "*"):
                    entries += len(names)
            memory: dict[str, Any] = await self._redis().info("memory")
            counters: dict[str, Any] = await self._redis().info("stats")
        except (RedisError, OSError) as exc:
            raise self._fail(exc) from None
        limit = int(memory.get("maxmemory", 0))
        return StoreStats(
            backend=self.name,
            entries=entries,
            # Redis' whole memory: the entries' own share is not something Redis reports.
            bytes=int(memory.get("used_memory", 0)),
            max_bytes=limit or None,
            evictions=int(counters.get("evicted_keys", 0)),
        )

    async def close(self) -> None:
        if self._client is not None:
            # A Redis that is down has nothing left to close.
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
