"""The response cache as the serving layer sees it: which requests it may answer, under
which scope and key, and the backend behind it, kept from ever failing a request.

A request is answered from the cache only when its answer is determined (greedy, a seed, an
embedding), the model and the key allow it (`cache` in [models.X], [cache] keys) and the
client did not say `Cache-Control: no-cache`; a computed answer is kept unless it said
`no-store`. A backend that fails or is slower than `redis_timeout_s` makes the request
computed as if there were no cache: a warning, a count in `llmd_cache_errors`, and the
backend is left alone for a while (1 s, doubling to 30 s) before it is tried again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil
from aiohttp import web

from llmd.cache.entry import Events, decode_runs, encode_runs
from llmd.cache.keys import Identities, determined, request_key
from llmd.cache.store import MemoryStore, Store, StoreStats
from llmd.engine import messages as m
from llmd.models import Model, ModelManager
from llmd.record import RequestRecord
from llmd.settings import CacheSettings, Settings
from llmd.settings_provider import SettingsProvider
from llmd.units import parse_size

log = logging.getLogger("llmd.cache")
_T = TypeVar("_T")

SHARED = "shared"
ANONYMOUS = "anonymous"
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
OPERATOR_TIMEOUT_S = 30.0


def key_scope(name: str) -> str:
    """The scope holding an API key's own entries."""
    return f"key:{name}"


@dataclass
class Plan:
    """Where one API request's answer is filed (or looked for)."""

    scope: str
    key: str


@dataclass
class Counts:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    errors: int = 0
    """Backend calls that failed or timed out."""
    stored: int = 0
    too_large: int = 0


class ResponseCache:
    """The daemon's one cache (`app[CACHE]`), its backend chosen by the settings in force."""

    def __init__(self, provider: SettingsProvider) -> None:
        self._provider = provider
        self.identities = Identities()
        self.counts = Counts()
        self._store: Store | None = None
        self._built_for: tuple[Any, ...] | None = None
        self._down_until = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self.last_error: str | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def follow(self, manager: ModelManager) -> None:
        """Identify each model as soon as it is loaded: hashing a 5 GB file takes seconds,
        better spent before a request waits for it than on the first cacheable one."""

        def loaded(name: str, event: str, why: str) -> None:
            entry = manager.entries.get(name)
            model = entry.current if entry is not None else None
            if model is None or event not in ("load", "swap"):
                return
            if self.config.enabled and model.settings.cache != "off":
                task = asyncio.ensure_future(self.identities.of(model))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        manager.listeners.append(loaded)

    @property
    def config(self) -> CacheSettings:
        return self._provider.current.cache

    # -- the backend ------------------------------------------------------------------------

    def store(self) -> Store:
        """The backend the settings in force name (rebuilt when a reload changes it)."""
        cfg = self.config
        want = (cfg.backend, cfg.redis_url) if cfg.backend == "redis" else ("memory",)
        if self._store is None or self._built_for != want:
            old = self._store
            if old is not None:
                asyncio.ensure_future(old.close())
            self._store = self._build(cfg)
            self._built_for = want
            self._down_until, self._backoff_s = 0.0, BACKOFF_MIN_S
        if isinstance(self._store, MemoryStore):
            limit = max_bytes(self._provider.current)
            if limit != self._store.max_bytes:
                self._store.max_bytes = limit
                self._store.resize(limit)
        return self._store

    def _build(self, cfg: CacheSettings) -> Store:
        if cfg.backend == "redis":
            from llmd.cache.redis import RedisStore  # only a Redis user needs the client

            return RedisStore(cfg.redis_url, cfg.redis_timeout_s)
        return MemoryStore(max_bytes(self._provider.current))

    async def _call(
        self, what: str, call: Awaitable[_T], operator: bool = False
    ) -> tuple[bool, _T | None]:
        """(ok, result) of a backend call; a failure or a timeout is logged and counted, and
        a backend that could not be reached is rested before the next try. `operator`: a
        clear or a count of every entry, given OPERATOR_TIMEOUT_S (a SCAN of 100,000 Redis
        entries takes about a second) and never rested for."""
        store = self._store
        if store is None or (not operator and time.monotonic() < self._down_until):
            if asyncio.iscoroutine(call):
                call.close()
            return False, None
        timeout_s = self.config.redis_timeout_s
        if operator:
            timeout_s = max(timeout_s, OPERATOR_TIMEOUT_S)
        try:
            if isinstance(store, MemoryStore):
                return True, await call
            return True, await asyncio.wait_for(call, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a cache never fails a request
            self.counts.errors += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            self.last_error = f"{what}: {reason}"
            # Redis answering with an error (a write refused at maxmemory) is no reason to
            # stop reading from it; one that cannot be reached is rested.
            rest = getattr(exc, "unreachable", True) and not operator
            log.warning(
                "cache: %s backend %s failed (%s)%s",
                store.name,
                what,
                reason,
                f"; answering without the cache for {self._backoff_s:.0f} s" if rest else "",
            )
            if rest:
                self._down_until = time.monotonic() + self._backoff_s
                self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            return False, None

    def _healthy(self) -> None:
        self._backoff_s = BACKOFF_MIN_S
        self.last_error = None

    # -- requests ---------------------------------------------------------------------------

    def scope(self, record: RequestRecord, model: Model) -> str | None:
        """Whose entries the request reads and writes; None when it is not to be cached."""
        cfg = self.config
        if not cfg.enabled or model.settings.cache == "off":
            return None
        key_mode = cfg.keys.get(record.key_name, "on") if record.key_name else "on"
        if key_mode == "off":
            return None
        if SHARED in (model.settings.cache, key_mode):
            return SHARED
        return key_scope(record.key_name) if record.key_name else ANONYMOUS

    async def plan(
        self, record: RequestRecord, model: Model, reqs: list[m.GenerateRequest]
    ) -> Plan | None:
        """Where the request's answer is filed, or None: it is not the cache's to answer."""
        scope = self.scope(record, model)
        if scope is None or not all(determined(r) for r in reqs):
            return None
        identity = await self.identities.of(model)
        if identity is None:
            return None
        return Plan(scope, request_key(identity, reqs))

    async def get_many(self, scope: str, keys: list[str]) -> list[bytes | None] | None:
        """Entries, or None when the backend could not be asked."""
        store = self.store()
        ok, found = await self._call("read", store.get_many(scope, keys))
        if ok:
            self._healthy()
        return found if ok else None

    async def put(self, scope: str, key: str, value: bytes) -> None:
        cfg = self.config
        if len(value) > _bytes(cfg.max_entry_bytes):
            self.counts.too_large += 1
            return
        store = self.store()
        ok, _ = await self._call("write", store.put(scope, key, value, cfg.ttl_s()))
        if ok:
            self.counts.stored += 1

    async def lookup(
        self, plan: Plan, reqs: list[m.GenerateRequest]
    ) -> tuple[str, list[Events] | None]:
        """("hit", a generation's stored engine events, given the requests they now answer),
        ("miss", None), or ("bypass", None) when the backend could not be asked."""
        found = await self.get_many(plan.scope, [plan.key])
        if found is None:
            return "bypass", None
        if found[0] is None:
            return "miss", None
        try:
            return "hit", decode_runs(found[0], [r.id for r in reqs], [r.n for r in reqs])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("cache: unreadable entry %s ignored: %s", plan.key[:16], exc)
            return "miss", None

    async def keep(self, plan: Plan, runs: list[Events]) -> None:
        await self.put(plan.scope, plan.key, encode_runs(runs))

    def count(self, record: RequestRecord, result: str) -> None:
        """The request's part (`x-llmd-cache`); none at all while the cache is disabled."""
        if not self.config.enabled:
            return
        record.cache = result
        if result == "hit":
            self.counts.hits += 1
        elif result == "miss":
            self.counts.misses += 1
        else:
            self.counts.bypasses += 1

    # -- operators --------------------------------------------------------------------------

    async def clear(self, key_name: str | None = None, shared: bool = False) -> int:
        """Delete a key's entries (or the shared ones, or every entry); how many went."""
        scope = SHARED if shared else key_scope(key_name) if key_name else None
        store = self.store()
        ok, gone = await self._call("clear", store.clear(scope), operator=True)
        if not ok:
            raise RuntimeError(f"the cache's {store.name} backend failed: {self.last_error}")
        return gone or 0

    async def stats(self, count: bool = True) -> dict[str, Any]:
        """The backend's size and this daemon's counters; `count`: entries counted too (a
        SCAN on Redis: `llmd cache stats`, not each metrics scrape)."""
        store = self.store()
        ok, st = await self._call("stats", store.stats(count), operator=count)
        if ok:
            self._healthy()
        backend: StoreStats | None = st if ok else None
        return {
            "enabled": self.config.enabled,
            "backend": store.name,
            "healthy": ok,
            "error": self.last_error,
            "entries": backend.entries if backend else None,
            "bytes": backend.bytes if backend else None,
            "max_bytes": backend.max_bytes if backend else None,
            "evictions": backend.evictions if backend else None,
            "ttl_s": self.config.ttl_s(),
            "hits": self.counts.hits,
            "misses": self.counts.misses,
            "bypasses": self.counts.bypasses,
            "errors": self.counts.errors,
            "stored": self.counts.stored,
            "too_large": self.counts.too_large,
        }

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def cache_control(header: str) -> tuple[bool, bool]:
    """(may read, may write) from a request's Cache-Control: `no-cache` and `no-store`."""
    directives = {d.strip().split("=", 1)[0].lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


@functools.cache
def _ram() -> int:
    """The machine's RAM, for sizes given as a share of it (read once: a request's path must
    not read /proc/meminfo again and again)."""
    return int(psutil.virtual_memory().total)


@functools.lru_cache(maxsize=16)
def _bytes(size: str | int) -> int:
    """A size setting in bytes, parsed once per value (not at each request)."""
    return parse_size(size, _ram())


def max_bytes(settings: Settings) -> int:
    return _bytes(settings.cache.max_bytes)


CACHE = web.AppKey("cache", ResponseCache)
