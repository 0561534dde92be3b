"""The response cache through the app, on fake model processes: what is answered from it (no
engine request at all), what is kept, the client's Cache-Control, scopes, and what a hit
counts (usage record, token limits, metrics). The real models' proof is tests/e2e/test_cache.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmd.auth.keys import add_key
from llmd.cache import CACHE
from llmd.cache.store import MemoryStore
from tests.unit.app_harness import (
    GEMMA,
    HI,
    Harness,
    json_of,
    keys_file,
    serve,
    sse_of,
)

GREEDY = {"messages": HI, "temperature": 0, "max_tokens": 8}
CHAT = "/v1/chat/completions"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def ask(
    h: Harness, body: dict[str, Any], path: str = CHAT, headers: dict[str, str] | None = None
) -> tuple[str | None, Any]:
    resp = await h.post(path, body, headers=headers)
    return resp.headers.get("x-llmd-cache"), await json_of(resp)


def test_a_repeated_greedy_request_is_answered_without_the_engine(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        first_cache, first = await ask(h, GREEDY)
        again_cache, again = await ask(h, {**GREEDY, "user": "someone", "stream": False})
        assert (first_cache, again_cache) == ("miss", "hit")
        assert len(h.submitted()) == 1  # the hit never reached the model process
        assert again["id"] != first["id"]
        assert again["choices"] == first["choices"]
        assert again["usage"] == first["usage"]
        # Streamed, the same entry: the stored pieces as chunks.
        resp = await h.post(CHAT, {**GREEDY, "stream": True})
        assert resp.headers["x-llmd-cache"] == "hit"
        chunks = [json.loads(d) for d in await sse_of(resp) if d != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == first["choices"][0]["message"]["content"]
        assert len(h.submitted()) == 1
        record = await h.record_of(CHAT)
        assert record.cache == "hit"

    serve(tmp_path, test)


def test_what_is_never_read_or_kept(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        sampled = {"messages": HI, "temperature": 1, "max_tokens": 8}
        assert (await ask(h, sampled))[0] == "bypass"
        assert (await ask(h, sampled))[0] == "bypass"
        seeded = {**sampled, "seed": 7}
        assert [(await ask(h, seeded))[0] for _ in range(2)] == ["miss", "hit"]
        # no-store: computed, not kept; no-cache: not read, but kept.
        other = {**GREEDY, "max_tokens": 9}
        assert (await ask(h, other, headers={"Cache-Control": "no-store"}))[0] == "miss"
        assert (await ask(h, other, headers={"Cache-Control": "no-cache"}))[0] == "bypass"
        assert (await ask(h, other))[0] == "hit"
        assert len(h.submitted()) == 2 + 1 + 2

    serve(tmp_path, test)


def test_disabled_models_keys_and_cache(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        gemma = {"model": GEMMA, "prompt": "Once", "temperature": 0, "max_tokens": 4}
        assert [(await ask(h, gemma, "/v1/completions"))[0] for _ in range(2)] == [
            "bypass",
            "bypass",
        ]

    serve(tmp_path, test, config={f"models.{GEMMA}.cache": "off"})

    async def off(h: Harness) -> None:
        resp = await h.post(CHAT, GREEDY)
        await json_of(resp)
        assert "x-llmd-cache" not in resp.headers
        assert (await h.record_of(CHAT)).cache is None

    serve(tmp_path / "off", off, config={"cache.enabled": False})


def test_scopes_are_per_key_unless_shared(tmp_path: Path) -> None:
    path = keys_file(tmp_path)
    alice = bearer(add_key(path, "alice")[1])
    bob = bearer(add_key(path, "bob")[1])
    carol = bearer(add_key(path, "carol")[1])

    async def test(h: Harness) -> None:
        assert (await ask(h, GREEDY, headers=alice))[0] == "miss"
        assert (await ask(h, GREEDY, headers=bob))[0] == "miss"  # not alice's answer
        assert (await ask(h, GREEDY, headers=bob))[0] == "hit"
        assert (await ask(h, GREEDY, headers=carol))[0] == "bypass"  # carol is "off"
        gemma = {"model": GEMMA, "prompt": "Once", "temperature": 0, "max_tokens": 4}
        assert (await ask(h, gemma, "/v1/completions", alice))[0] == "miss"
        assert (await ask(h, gemma, "/v1/completions", bob))[0] == "hit"  # a shared model

    serve(
        tmp_path,
        test,
        config={"cache.keys": {"carol": "off"}, f"models.{GEMMA}.cache": "shared"},
    )


def test_a_hit_is_recorded_but_not_charged_tokens(tmp_path: Path) -> None:
    path = keys_file(tmp_path)
    secret = add_key(path, "alice", tpm=1_000_000)[1]
    ops = bearer(add_key(path, "ops", admin=True)[1])

    async def test(h: Harness) -> None:
        await ask(h, GREEDY, headers=bearer(secret))
        before = await (await h.get("/metrics", ops)).text()
        _, body = await ask(h, GREEDY, headers=bearer(secret))
        # The limiter's window holds the miss's tokens only: neither hit was charged.
        resp = await h.post(CHAT, GREEDY, headers=bearer(secret))
        remaining = int(resp.headers["x-ratelimit-remaining-tokens"])
        assert remaining == 1_000_000 - body["usage"]["total_tokens"]
        after = await (await h.get("/metrics", ops)).text()
        assert _value(after, 'llmd_cache_requests_total{model="smollm2",result="hit"}') == 2
        assert _value(after, "llmd_cache_entries") == 1
        assert _value(before, 'llmd_completion_tokens_total{key="alice",model="smollm2"}') == (
            _value(after, 'llmd_completion_tokens_total{key="alice",model="smollm2"}')
        )

    serve(tmp_path, test)


def test_embeddings_are_kept_per_input(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        path = "/v1/embeddings"
        first_cache, first = await ask(h, {"input": ["alpha", "beta"]}, path)
        cache, mixed = await ask(h, {"input": ["beta", "gamma"]}, path)
        assert (first_cache, cache) == ("miss", "miss")
        assert mixed["data"][0]["embedding"] == first["data"][1]["embedding"]
        cache, again = await ask(h, {"input": ["gamma", "alpha"]}, path)
        assert cache == "hit"
        assert again["data"][1]["embedding"] == first["data"][0]["embedding"]
        assert [r.prompt for r in h.submitted()] == ["alpha", "beta", "gamma"]

    serve(tmp_path, test)


def _value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics")


def test_an_unreadable_entry_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        _, first = await ask(h, GREEDY)
        store = h.client.app[CACHE].store()
        assert isinstance(store, MemoryStore)
        slots = list(store._entries)  # noqa: SLF001 - what a shared Redis could hold
        assert len(slots) == 1
        scope, key = slots[0]
        for bad in (
            b'{"runs": [[["d", "not what it seems"]]]}',
            b'{"runs": [[["s", "1", 8, null]]]}',
            b'{"runs": [[["s", 1, 8, null], ["d", 0, "Hi", 1, null, null, null]]]}',  # no end
            b'{"runs": [[["s", 1, 8, null], ["d", 3, "Hi", 1, "stop", null, null]]]}',
        ):
            await store.put(scope, key, bad, None)
            cache, again = await ask(h, GREEDY)
            assert cache == "miss" and again["choices"] == first["choices"]
        assert (await ask(h, GREEDY))[0] == "hit"
        assert len(h.submitted()) == 5

    serve(tmp_path, test)
