"""The response cache's pieces (llmd/cache/) without a daemon: which requests are determined,
what their key covers, entries as bytes and back, the memory backend's LRU order, TTL (on a
clock of the test's own) and byte bound (10,000 entries through 64 KiB), the scope a request
is filed under, a model's identity following its file's content, and Cache-Control.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmd.cache import ResponseCache, cache_control, key_scope
from llmd.cache.entry import decode_embedding, decode_runs, encode_embedding, encode_runs
from llmd.cache.keys import Identities, determined, request_key
from llmd.cache.store import ENTRY_OVERHEAD, MemoryStore
from llmd.engine import messages as m
from llmd.record import RequestRecord
from llmd.sampling import resolve
from llmd.settings import CacheSettings, Settings
from llmd.settings_provider import SettingsProvider
from llmd.watch import file_key

IDENTITY = "abc123/ctx=512/kv=f16/fa=auto/llama=0.3"


def request(**kw: Any) -> m.GenerateRequest:
    sampling = kw.pop("sampling", None) or resolve(temperature=0, max_tokens=8)
    return m.GenerateRequest(
        id=kw.pop("id", "req-1"), prompt=kw.pop("prompt", "Hi"), sampling=sampling, **kw
    )


# -- keys -----------------------------------------------------------------------------------


def test_determined_requests() -> None:
    assert determined(request())
    assert determined(request(sampling=resolve(temperature=0.8, seed=3)))
    assert determined(request(sampling=resolve(temperature=0.8), embed=True))
    assert not determined(request(sampling=resolve(temperature=0.8)))
    assert not determined(request(sampling=resolve()))  # the built-in temperature samples


def test_request_key_leaves_out_who_asked_and_the_request_id() -> None:
    base = request_key(IDENTITY, [request()])
    same = request(id="req-2", tenant="alice", weight=3, prompt_param="prompt")
    assert request_key(IDENTITY, [same]) == base
    assert len(base) == 64 and int(base, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "Hi!"},
        {"prompt": [1, 2, 3]},
        {"sampling": resolve(temperature=0, max_tokens=9)},
        {"sampling": resolve(temperature=0, max_tokens=8, top_k=5)},
        {"sampling": resolve(temperature=0, max_tokens=8, seed=1)},
        {"sampling": resolve(temperature=0, max_tokens=8, logit_bias={7: 1.0})},
        {"n": 2},
        {"stop": ["\n"]},
        {"logprobs": 0},
        {"ignore_eos": True},
        {"embed": True},
        {"max_tokens_up_to_room": True},
        {"text_spans": [(0, 2)]},
    ],
)
def test_request_key_changes_with_what_the_engine_is_asked(change: dict[str, Any]) -> None:
    assert request_key(IDENTITY, [request(**change)]) != request_key(IDENTITY, [request()])


def test_request_key_changes_with_the_identity_and_the_prompts_order() -> None:
    a, b = request(prompt="a"), request(prompt="b")
    assert request_key(IDENTITY, [a]) != request_key(IDENTITY.replace("abc", "abd"), [a])
    assert request_key(IDENTITY, [a, b]) != request_key(IDENTITY, [b, a])
    assert request_key(IDENTITY, [a, b]) != request_key(IDENTITY, [a])


def _loaded(
    path: Path, ctx: int = 512, flash_attn: str | None = None, invariant: bool = False
) -> Any:
    """What Identities reads of a model: its load options, what its process reported at load
    (flash attention as measured; None: not loaded yet) and the file version it loaded."""
    configured = "fastest" if flash_attn else "auto"
    load = SimpleNamespace(
        path=path,
        ctx_per_seq=ctx,
        kv_type="f16",
        flash_attn=configured,
        batch_invariant=invariant,
    )
    info = SimpleNamespace(flash_attn=flash_attn) if flash_attn else None
    return SimpleNamespace(
        process=SimpleNamespace(options=SimpleNamespace(load=load), info=info),
        file_key=file_key([path]),
    )


def test_identity_holds_flash_attention_as_the_process_measured_it(tmp_path: Path) -> None:
    """With flash_attn "fastest" the arithmetic is what the load chose, which differs between
    CPUs (llmd/engine/attention.py): daemons sharing a Redis must not mix the two."""

    async def run() -> None:
        path = tmp_path / "m.gguf"
        path.write_bytes(b"weights")
        on = await Identities().of(_loaded(path, flash_attn="on"))
        off = await Identities().of(_loaded(path, flash_attn="off"))
        assert on is not None and off is not None and on != off
        assert "/fa=off/" in off

    asyncio.run(run())


def test_identity_follows_the_files_content(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "m.gguf"
        path.write_bytes(b"weights one")
        ids = Identities()
        first = await ids.of(_loaded(path))
        assert first is not None and first == await ids.of(_loaded(path))
        assert first != await ids.of(_loaded(path, ctx=1024))
        # Batch-invariant kernels compute other logits (llmd/engine/invariance.py).
        assert first != await ids.of(_loaded(path, invariant=True))
        # Replaced: the process still running the old version keeps the identity it was
        # given; one whose file was not read before it changed gets none (not cached).
        old = _loaded(path)
        tmp = tmp_path / ".m.tmp"
        tmp.write_bytes(b"weights two")
        os.replace(tmp, path)
        assert await ids.of(old) == first
        assert await Identities().of(old) is None
        second = await ids.of(_loaded(path))
        assert second is not None and second != first
        # The same content again (a copy): the same identity, whatever its time stamp.
        tmp.write_bytes(b"weights one")
        os.replace(tmp, path)
        assert await ids.of(_loaded(path)) == first

    asyncio.run(run())


# -- entries --------------------------------------------------------------------------------


def test_entry_round_trip_with_logprobs() -> None:
    top = [m.TopLogprob("é", -0.5, [195, 169]), m.TopLogprob(" b", -1.25, [32, 98])]
    runs = [
        [
            m.Started("old-1", 12, 8, "<|im_start|>user\nHi"),
            m.Admitted("old-1", 11),
            m.Delta("old-1", 0, "é", 1, [m.TokenLogprob("é", -0.5, [195, 169], top)]),
            m.Delta("old-1", 0, "", 0, None, "stop", "\n"),
        ],
        [
            m.Started("old-2", 3, 8),
            m.Admitted("old-2", 0),
            m.Delta("old-2", 1, "x", 1, None, "length"),
            m.Delta("old-2", 0, "y", 1, None, "stop"),
        ],
    ]
    data = encode_runs(runs)
    assert isinstance(data, bytes)
    back = decode_runs(data, ["new-1", "new-2"], [1, 2])
    renamed = [
        [dataclasses.replace(e, id=new) for e in events]
        for new, events in zip(["new-1", "new-2"], runs, strict=True)
    ]
    assert back == renamed
    with pytest.raises(ValueError):
        decode_runs(data, ["new-1"], [1])


@pytest.mark.parametrize(
    ("data", "ns"),
    [
        (b'{"runs":[[["z",1]]]}', [1]),  # an unknown event
        (b'{"runs":[[["a",0],["s",1,8,null],["d",0,"x",1,"stop",null,null]]]}', [1]),
        (b'{"runs":[[["s",1,8,null],["d",0,"x",1,null,null,null]]]}', [1]),  # never ends
        (b'{"runs":[[["s",1,8,null],["d",0,"x",1,"stop",null,null]]]}', [2]),  # n=2: one ends
        (b'{"runs":[[["s",1,8,null],["d",3,"x",1,"stop",null,null]]]}', [1]),  # index 3 of 1
        (b'{"runs":[[["s","1",8,null]]]}', [1]),  # a count that is no number
    ],
)
def test_entry_refuses_what_it_cannot_replay(data: bytes, ns: list[int]) -> None:
    with pytest.raises(ValueError):
        decode_runs(data, ["r"], ns)


def test_entry_keeps_only_replayable_events() -> None:
    with pytest.raises(TypeError):
        encode_runs([[m.Embedding("r", b"\x00" * 4)]])


def test_embedding_round_trip() -> None:
    vector = bytes(range(256)) * 9
    data = encode_embedding(17, vector)
    assert decode_embedding(data) == (17, vector)
    assert b"\\u" not in data  # base64 in JSON: no escaped bytes


# -- the memory backend ---------------------------------------------------------------------


def size(scope: str, key: str, value: bytes) -> int:
    return len(scope) + len(key) + len(value) + ENTRY_OVERHEAD


def test_memory_store_drops_the_least_recently_used() -> None:
    async def run() -> None:
        value = b"v" * 100
        store = MemoryStore(3 * size("s", "k0", value))
        for key in ("k0", "k1", "k2"):
            await store.put("s", key, value, None)
        assert (await store.stats()).entries == 3
        assert await store.get_many("s", ["k0"]) == [value]  # k0 now the most recent
        await store.put("s", "k3", value, None)
        assert await store.get_many("s", ["k0", "k1", "k2", "k3"]) == [value, None, value, value]
        stats = await store.stats()
        assert (stats.entries, stats.evictions) == (3, 1)
        assert stats.bytes == 3 * size("s", "k0", value) == stats.max_bytes
        # Replacing an entry is no eviction, and its old bytes are given back.
        await store.put("s", "k3", b"w", None)
        stats = await store.stats()
        assert (stats.entries, stats.evictions) == (3, 1)
        assert stats.bytes == 2 * size("s", "k0", value) + size("s", "k3", b"w")

    asyncio.run(run())


def test_memory_store_bound_counts_the_overhead() -> None:
    async def run() -> None:
        store = MemoryStore(size("s", "a", b"") * 2)
        await store.put("s", "a", b"", None)
        await store.put("s", "b", b"", None)
        assert (await store.stats()).entries == 2
        # One byte more than the bound holds: the oldest goes.
        await store.put("s", "c", b"x", None)
        assert await store.get_many("s", ["a", "b", "c"]) == [None, None, b"x"]
        # Larger than the whole bound: not kept, and nothing else is evicted for it.
        await store.put("s", "d", b"y" * store.max_bytes, None)
        assert await store.get_many("s", ["c", "d"]) == [b"x", None]
        # A smaller bound (a reload) evicts at once.
        store.resize(0)
        stats = await store.stats()
        assert (stats.entries, stats.bytes) == (0, 0)

    asyncio.run(run())


def test_memory_store_bound_holds_under_ten_thousand_entries() -> None:
    async def run() -> None:
        limit = 64 * 1024
        store = MemoryStore(limit)
        for i in range(10_000):
            await store.put(key_scope("alice"), f"{i:064x}", b"e" * (i % 300), 3600)
            assert (await store.stats()).bytes <= limit
        stats = await store.stats()
        assert stats.bytes <= limit and stats.entries > 100
        assert stats.evictions == 10_000 - stats.entries
        held = await store.get_many(key_scope("alice"), [f"{i:064x}" for i in range(10_000)])
        kept = [i for i, v in enumerate(held) if v is not None]
        assert kept == list(range(10_000 - stats.entries, 10_000)), "the newest are kept"

    asyncio.run(run())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_ttl() -> None:
    async def run() -> None:
        clock = Clock()
        store = MemoryStore(10_000, clock=clock)
        await store.put("s", "short", b"1", 10)
        await store.put("s", "forever", b"2", None)
        clock.now += 9.9
        assert await store.get_many("s", ["short", "forever"]) == [b"1", b"2"]
        clock.now += 0.1
        assert await store.get_many("s", ["short", "forever"]) == [None, b"2"]
        stats = await store.stats()
        assert (stats.entries, stats.bytes, stats.evictions) == (1, size("s", "forever", b"2"), 0)
        clock.now += 10**9
        assert await store.get_many("s", ["forever"]) == [b"2"]

    asyncio.run(run())


def test_memory_store_clear_by_scope() -> None:
    async def run() -> None:
        store = MemoryStore(10_000)
        for scope in ("key:a", "key:b", "shared"):
            for key in ("1", "2"):
                await store.put(scope, key, b"v", None)
        assert await store.clear("key:a") == 2
        assert await store.get_many("key:a", ["1", "2"]) == [None, None]
        assert await store.get_many("key:b", ["1"]) == [b"v"]
        assert await store.clear("key:a") == 0
        assert await store.clear() == 4
        assert (await store.stats()).bytes == 0

    asyncio.run(run())


# -- the front ------------------------------------------------------------------------------


def front(**cache: Any) -> ResponseCache:
    return ResponseCache(SettingsProvider(Settings(cache=CacheSettings(**cache))))


def record(key: str | None) -> RequestRecord:
    return RequestRecord(
        "req-1",
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "127.0.0.1",
        0.0,
        0.0,
        key_name=key,
    )


def model(cache: str = "on") -> Any:
    return SimpleNamespace(settings=SimpleNamespace(cache=cache))


def test_scopes() -> None:
    cache = front(keys={"batch": "off", "team": "shared"})
    assert cache.scope(record("alice"), model()) == "key:alice"
    assert cache.scope(record(None), model()) == "anonymous"
    assert cache.scope(record("team"), model()) == "shared"
    assert cache.scope(record("alice"), model("shared")) == "shared"
    assert cache.scope(record("batch"), model()) is None
    assert cache.scope(record("batch"), model("shared")) is None
    assert cache.scope(record("alice"), model("off")) is None
    assert front(enabled=False).scope(record("alice"), model()) is None


def test_front_bound_holds_under_ten_thousand_entries() -> None:
    """Through ResponseCache.put, as serving keeps entries: the setting's bound holds, the
    entries too large for max_entry_bytes are counted and not kept."""

    async def run() -> None:
        cache = front(max_bytes="64KiB", max_entry_bytes="2KiB")
        for i in range(10_000):
            await cache.put(key_scope(f"k{i % 7}"), f"{i:064x}", b"e" * (i % 2500))
        stats = await cache.stats()
        assert stats["backend"] == "memory" and stats["healthy"]
        assert stats["max_bytes"] == 64 * 1024
        assert 0 < stats["bytes"] <= 64 * 1024
        assert stats["too_large"] == sum(1 for i in range(10_000) if i % 2500 > 2048)
        assert stats["stored"] == 10_000 - stats["too_large"]
        assert stats["evictions"] == stats["stored"] - stats["entries"]
        before = stats["entries"]
        gone = await cache.clear(key_name="k3")
        assert 0 < gone < before
        assert await cache.clear() == before - gone
        assert (await cache.stats())["entries"] == 0

    asyncio.run(run())


def test_cache_control() -> None:
    assert cache_control("") == (True, True)
    assert cache_control("no-cache") == (False, True)
    assert cache_control("no-store") == (True, False)
    assert cache_control("No-Cache, no-store") == (False, False)
    assert cache_control("max-age=0, no-store") == (True, False)
    assert cache_control("no-cache=foo") == (False, True)
    assert cache_control("private") == (True, True)


# A lone surrogate ("\ud800", which JSON may carry) reaches the key and the entry: once a 500
# (tests/e2e/test_hostile_bodies.py's "lone surrogate in an input").


def test_request_key_of_a_lone_surrogate() -> None:
    key = request_key(IDENTITY, [request(prompt="\ud800", embed=True)])
    assert key != request_key(IDENTITY, [request(prompt="\ud801", embed=True)])


def test_entry_of_a_lone_surrogate() -> None:
    runs = [[m.Started("r", 1, 8, "\ud800"), m.Delta("r", 0, "x", 1, None, "stop")]]
    assert decode_runs(encode_runs(runs), ["r"], [1]) == runs
