"""The Redis backend of the response cache (llmd/cache/redis.py) against a real redis-server
started on a free port (tests/redis_server.py): entries, TTL, scopes, clear, stats, a Redis
killed and started again under the same store object, a password never shown; and the
cache's front (llmd/cache/front.py) on a Redis that is down, then back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from llmd.cache.front import ResponseCache
from llmd.cache.redis import PREFIX, RedisStore, RedisStoreError, safe_url
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from tests.redis_server import RedisServer, running

TIMEOUT_S = 2.0
PASSWORD = "s3cr/et:pw@x"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running(tmp_path / "redis") as server:
        yield server


def on_store(server: RedisServer, test: Callable[[RedisStore, Redis], Awaitable[None]]) -> None:
    """`test(store, raw)`: a RedisStore on `server` and a plain client to look behind it."""

    async def main() -> None:
        store = RedisStore(server.url, TIMEOUT_S)
        raw = Redis.from_url(server.url)
        try:
            await test(store, raw)
        finally:
            await store.close()
            await raw.aclose()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 30.0) -> None:
    """Poll `check` until it holds; fail when it never does (a bound for a hung test only)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "the condition never came to hold"
        await asyncio.sleep(0.05)


def test_put_and_get_many(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        assert await store.get_many("key:a", ["k1", "k2"]) == [None, None]
        await store.put("key:a", "k1", b"one", None)
        await store.put("key:a", "k2", b"\x00two\xff", 60.0)
        assert await store.get_many("key:a", ["k1", "missing", "k2"]) == [
            b"one",
            None,
            b"\x00two\xff",
        ]
        assert await store.get_many("key:a", []) == []
        # Written again: the newer value.
        await store.put("key:a", "k1", b"uno", None)
        assert await store.get_many("key:a", ["k1"]) == [b"uno"]
        # Where it lives, and with which expiry: none for None, the TTL in ms otherwise.
        assert await raw.get(f"{PREFIX}key:a:k1") == b"uno"
        assert await raw.pttl(f"{PREFIX}key:a:k1") == -1
        assert 0 < await raw.pttl(f"{PREFIX}key:a:k2") <= 60_000

    on_store(redis_server, test)


def test_ttl_expires_entries(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        await store.put("key:a", "short", b"soon gone", 0.2)
        await store.put("key:a", "long", b"stays", 3600.0)
        assert 0 < await raw.pttl(f"{PREFIX}key:a:short") <= 200

        async def gone() -> bool:
            return await store.get_many("key:a", ["short"]) == [None]

        await eventually(gone)
        assert await store.get_many("key:a", ["long"]) == [b"stays"]

    on_store(redis_server, test)


def test_scopes_are_kept_apart(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        await store.put("key:alice", "same", b"alice's", None)
        await store.put("key:bob", "same", b"bob's", None)
        await store.put("shared", "same", b"everyone's", None)
        assert await store.get_many("key:alice", ["same"]) == [b"alice's"]
        assert await store.get_many("key:bob", ["same"]) == [b"bob's"]
        assert await store.get_many("shared", ["same"]) == [b"everyone's"]
        assert await store.get_many("anonymous", ["same"]) == [None]

    on_store(redis_server, test)


def test_clear_one_scope_and_all(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        for n in range(1200):  # more than one SCAN / UNLINK batch
            await store.put("key:alice", f"k{n}", b"a", None)
        await store.put("key:bob", "k0", b"b", None)
        # A scope whose name starts like alice's is another scope.
        await store.put("key:alice2", "k0", b"c", None)
        await store.put("shared", "k0", b"s", None)
        await raw.set("someone-else:key:alice:k0", b"not llmd's")
        await raw.set("llmd:other", b"not the cache's")

        assert await store.clear("key:alice") == 1200
        assert await store.get_many("key:alice", ["k0", "k1199"]) == [None, None]
        assert await store.get_many("key:bob", ["k0"]) == [b"b"]
        assert await store.get_many("key:alice2", ["k0"]) == [b"c"]
        assert await store.clear("key:alice") == 0

        assert await store.clear(None) == 3
        assert await raw.keys(f"{PREFIX}*") == []
        assert await raw.get("someone-else:key:alice:k0") == b"not llmd's"
        assert await raw.get("llmd:other") == b"not the cache's"

    on_store(redis_server, test)


def test_clear_takes_a_scope_literally(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        await store.put("key:a", "k", b"1", None)
        await store.put("key:b", "k", b"2", None)
        # Glob specials in a scope name match nothing but themselves.
        assert await store.clear("key:*") == 0
        assert await store.clear("key:?") == 0
        assert await store.get_many("key:a", ["k"]) == [b"1"]

    on_store(redis_server, test)


def test_stats(redis_server: RedisServer) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        await raw.set("not-ours", b"x")
        empty = await store.stats()
        assert (empty.backend, empty.entries, empty.max_bytes, empty.evictions) == (
            "redis",
            0,
            None,  # maxmemory 0: Redis is unbounded
            0,
        )
        for n in range(10):
            await store.put("key:a", f"k{n}", b"v" * 1000, None)
        await store.put("shared", "k", b"v", None)
        full = await store.stats()
        assert full.entries == 11
        assert full.bytes > empty.bytes > 0

        # A bound and an eviction policy are Redis' own; stats reports them.
        await raw.config_set("maxmemory-policy", "allkeys-lru")
        await raw.config_set("maxmemory", str(full.bytes + 512 * 1024))
        for n in range(40):
            await store.put("key:a", f"big{n}", b"x" * 64 * 1024, None)
        bounded = await store.stats()
        assert bounded.max_bytes == full.bytes + 512 * 1024
        assert bounded.evictions > 0
        assert bounded.entries < 11 + 40

    on_store(redis_server, test)


def test_down_raises_and_the_same_store_works_once_it_is_back(
    redis_server: RedisServer,
) -> None:
    async def test(store: RedisStore, raw: Redis) -> None:
        await store.put("key:a", "k", b"before", None)
        assert await store.get_many("key:a", ["k"]) == [b"before"]

        redis_server.kill()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.get_many("key:a", ["k"]),
            lambda: store.put("key:a", "k", b"while down", 60.0),
            lambda: store.clear("key:a"),
            store.stats,
            lambda: store.get_many("key:a", ["k"]),  # again: refused, not hung
        ]
        for call in calls:
            with pytest.raises(RedisStoreError, match="redis at redis://127.0.0.1"):
                await call()

        redis_server.start()  # same port, empty (nothing was saved)
        assert await store.get_many("key:a", ["k"]) == [None]
        await store.put("key:a", "k", b"after", None)
        assert await store.get_many("key:a", ["k"]) == [b"after"]
        assert (await store.stats()).entries == 1

    on_store(redis_server, test)


def test_a_password_never_shows(tmp_path: Path) -> None:
    with running(tmp_path / "redis", password=PASSWORD) as server:
        assert safe_url(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"
        wrong = server.url.replace("s3cr", "wr0ng")

        async def main() -> None:
            good = RedisStore(server.url, TIMEOUT_S)
            await good.put("key:a", "k", b"v", None)
            assert await good.get_many("key:a", ["k"]) == [b"v"]
            messages = []
            bad = RedisStore(wrong, TIMEOUT_S)
            with pytest.raises(RedisStoreError) as refused:
                await bad.get_many("key:a", ["k"])
            messages.append(str(refused.value))
            server.kill()
            with pytest.raises(RedisStoreError) as down:
                await good.get_many("key:a", ["k"])
            messages.append(str(down.value))
            # A password with a '/' not percent-encoded: the URL parser misreads it.
            raw = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", TIMEOUT_S)
            with pytest.raises(RedisStoreError) as unusable:
                await raw.get_many("key:a", ["k"])
            messages.append(str(unusable.value))
            for store in (good, bad, raw):
                await store.close()
                messages.append(store.url)
            for message in messages:
                assert "redis" in message
                for piece in ("s3cr", "wr0ng", "pw@x", "pw%40x"):
                    assert piece not in message, message

        asyncio.run(main())


ACL = (
    "llmd on >pw resetkeys ~llmd:cache:* -@all +mget +set +scan +unlink +info +client|setname +ping"
)
"""The ACL user docs/cache.md gives: llmd's keys only, and the commands RedisStore sends."""


def test_an_acl_user_limited_to_llmds_keys_is_enough(redis_server: RedisServer) -> None:
    async def test(admin: RedisStore, raw: Redis) -> None:
        await raw.execute_command("ACL", "SETUSER", *ACL.split())  # type: ignore[no-untyped-call]
        await raw.set("not-ours", b"x")
        store = RedisStore(f"redis://llmd:pw@127.0.0.1:{redis_server.port}/0", TIMEOUT_S)
        try:
            await store.put("key:a", "k", b"v", 60.0)
            assert await store.get_many("key:a", ["k"]) == [b"v"]
            assert (await store.stats()).entries == 1
            assert await store.clear("key:a") == 1
            assert await store.clear(None) == 0
        finally:
            await store.close()
        user = Redis.from_url(f"redis://llmd:pw@127.0.0.1:{redis_server.port}/0")
        try:
            with pytest.raises(NoPermissionError):
                await user.mget(["not-ours"])  # the ACL does bind: the test can fail
        finally:
            await user.aclose()

    on_store(redis_server, test)


def redis_cache(url: str) -> ResponseCache:
    settings = Settings.model_validate(
        {"cache": {"backend": "redis", "redis_url": url, "redis_timeout_s": TIMEOUT_S}}
    )
    return ResponseCache(SettingsProvider(settings))


def test_front_answers_without_a_dead_redis_and_uses_it_once_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # its port chosen, nothing listening yet
    cache = redis_cache(server.url)

    async def main() -> None:
        assert await cache.get_many("key:a", ["k"]) is None
        assert cache.counts.errors == 1
        assert cache.last_error is not None and "read" in cache.last_error
        await cache.put("key:a", "k", b"not kept")  # rested: not even tried
        assert cache.counts.errors == 1 and cache.counts.stored == 0
        stats = await cache.stats()
        assert (stats["backend"], stats["healthy"], stats["entries"]) == ("redis", False, None)

        server.start()
        try:

            async def back() -> bool:
                return await cache.get_many("key:a", ["k"]) == [None]

            await eventually(back, within_s=60.0)  # past the backoff (1 s, doubling)
            await cache.put("key:a", "k", b"kept")
            assert cache.counts.stored == 1
            assert await cache.get_many("key:a", ["k"]) == [b"kept"]
            stats = await cache.stats()
            assert (stats["healthy"], stats["entries"], stats["error"]) == (True, 1, None)
        finally:
            await cache.close()
            server.stop()

    asyncio.run(main())
