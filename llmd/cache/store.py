"""Where cached answers live: the backends' contract, and the in-memory backend.

Entries are bytes filed under (scope, key): the scope is whose they are (`key:NAME` for an API
key's own, `shared`, `anonymous` without keys), so that one key never reads another's answers
and revoking a key can delete exactly its own. The memory backend is bounded in bytes and
drops the least recently used entry first; every entry also expires after the TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

ENTRY_OVERHEAD = 160
"""Bytes an entry costs beyond its key and value (the dict slot, the tuple, the bytes objects'
headers), counted so that 10,000 tiny entries cannot exceed the bound either."""


@dataclass
class StoreStats:
    backend: str
    entries: int | None
    """None: not counted (Redis, for a metrics scrape: counting takes a SCAN)."""
    bytes: int
    max_bytes: int | None
    """None: bounded by the backend's own configuration (Redis' maxmemory)."""
    evictions: int


class Store(Protocol):
    """A backend. Calls may raise (a Redis that is down); the caller counts and survives it."""

    name: str

    async def get_many(self, scope: str, keys: list[str]) -> list[bytes | None]:
        """Each key's entry, or None where there is none (or it expired)."""

    async def put(self, scope: str, key: str, value: bytes, ttl_s: float | None) -> None:
        """Keep an entry for `ttl_s` seconds (None: until evicted)."""

    async def clear(self, scope: str | None = None) -> int:
        """Delete one scope's entries (None: all of llmd's); how many went."""

    async def stats(self, count: bool = True) -> StoreStats:
        """Size and evictions; `count`: the entries counted too, however long it takes."""

    async def close(self) -> None: ...


class MemoryStore:
    """Entries in this process, least recently used out past `max_bytes`."""

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    @staticmethod
    def _size(slot: tuple[str, str], value: bytes) -> int:
        return len(slot[0]) + len(slot[1]) + len(value) + ENTRY_OVERHEAD

    def _drop(self, slot: tuple[str, str]) -> None:
        value, _ = self._entries.pop(slot)
        self._bytes -= self._size(slot, value)

    async def get_many(self, scope: str, keys: list[str]) -> list[bytes | None]:
        now = self._clock()
        out: list[bytes | None] = []
        for key in keys:
            slot = (scope, key)
            found = self._entries.get(slot)
            if found is not None and found[1] is not None and found[1] <= now:
                self._drop(slot)
                found = None
            if found is not None:
                self._entries.move_to_end(slot)
            out.append(None if found is None else found[0])
        return out

    async def put(self, scope: str, key: str, value: bytes, ttl_s: float | None) -> None:
        slot = (scope, key)
        if slot in self._entries:
            self._drop(slot)
        size = self._size(slot, value)
        if size > self.max_bytes:
            return
        self.resize(self.max_bytes - size)
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._entries[slot] = (value, expires)
        self._bytes += size

    def resize(self, max_bytes: int) -> None:
        """Drop least recently used entries until at most `max_bytes` are held."""
        while self._entries and self._bytes > max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    async def clear(self, scope: str | None = None) -> int:
        gone = [slot for slot in self._entries if scope is None or slot[0] == scope]
        for slot in gone:
            self._drop(slot)
        return len(gone)

    async def stats(self, count: bool = True) -> StoreStats:
        return StoreStats(
            self.name, len(self._entries), self._bytes, self.max_bytes, self.evictions
        )

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
