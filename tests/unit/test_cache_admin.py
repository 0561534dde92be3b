"""The operator's controls of the response cache, in-process (tests/unit/app_harness.py): the
admin API `GET` / `DELETE /api/v1/cache` (who may call it, what it answers, what it deletes,
the audit entry, a failing backend), `llmd cache stats|clear` and `llmd usage purge --key`
against it, and data deletion: a key revoked through the API or in the keys file (as
`llmd keys revoke` does it) loses its cached answers, a rotated one keeps them.

The fake models answer a greedy request (`temperature` 0) from the cache the second time:
`x-llmd-cache` says hit or miss."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmd import cli
from llmd.auth.keys import add_key, read_keys_file, revoke_key, rotate_key, write_keys_file
from llmd.auth.middleware import AUTH
from llmd.cache import CACHE
from llmd.cache.store import MemoryStore
from llmd.cli.cache import render
from llmd.cli.client import ADMIN_KEY_ENV
from tests.unit.app_harness import HI, SMOL, Harness, error_of, json_of, keys_file, serve

USAGE_ON = {"usage.enabled": True}
STATS = {
    "enabled",
    "backend",
    "healthy",
    "error",
    "entries",
    "bytes",
    "max_bytes",
    "evictions",
    "ttl_s",
    "hits",
    "misses",
    "bypasses",
    "errors",
    "stored",
    "too_large",
}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key(tmp_path: Path, name: str, **fields: Any) -> str:
    return add_key(keys_file(tmp_path), name, **fields)[1]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """An admin key `root` and the keys alice, bob and carol: their secrets by name."""
    return {
        "root": key(tmp_path, "root", admin=True),
        **{name: key(tmp_path, name) for name in ("alice", "bob", "carol")},
    }


async def ask(h: Harness, secret: str, text: str = "Say hi to me") -> str:
    """A greedy chat completion; its x-llmd-cache."""
    body = {"model": SMOL, "messages": [{"role": "user", "content": text}], "temperature": 0}
    resp = await h.post("/v1/chat/completions", body, headers=bearer(secret))
    await json_of(resp)
    return resp.headers["x-llmd-cache"]


async def stats(h: Harness, admin: str) -> dict[str, Any]:
    body: dict[str, Any] = await json_of(await h.get("/api/v1/cache", bearer(admin)))
    return body


async def clear(h: Harness, admin: str, query: str = "", status: int = 200) -> Any:
    return await json_of(
        await h.client.delete(f"/api/v1/cache{query}", headers=bearer(admin)), status
    )


async def audit(h: Harness, admin: str, action: str) -> list[dict[str, Any]]:
    """The audit log's entries of this action, oldest first."""
    body = await json_of(await h.get("/api/v1/audit?order=asc", bearer(admin)))
    return [e for e in body["data"] if e["action"] == action]


async def audited(h: Harness, admin: str, action: str, count: int) -> list[dict[str, Any]]:
    """The entries of this action once there are `count` (the audit writer is a queue)."""
    for _ in range(200):
        entries = await audit(h, admin, action)
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} audit entries {action}: {entries}")


async def fill(h: Harness, keys: dict[str, str], *names: str) -> None:
    """One cached answer per key named: a miss kept, then a hit."""
    for name in names:
        assert await ask(h, keys[name]) == "miss"
        assert await ask(h, keys[name]) == "hit"


# -- the admin API ------------------------------------------------------------------------------


def test_the_cache_api_needs_an_admin_key(tmp_path: Path, keys: dict[str, str]) -> None:
    async def test(h: Harness) -> None:
        for method in ("GET", "DELETE"):
            await error_of(await h.client.request(method, "/api/v1/cache"), 401)
            resp = await h.client.request(method, "/api/v1/cache", headers=bearer(keys["alice"]))
            await error_of(resp, 403, code="admin_key_required", type_="permission_error")
        await fill(h, keys, "alice")
        # Nothing was deleted by the refused DELETEs.
        assert (await stats(h, keys["root"]))["entries"] == 1

    serve(tmp_path, test)


def test_stats_count_entries_hits_misses_and_bypasses(tmp_path: Path, keys: dict[str, str]) -> None:
    async def test(h: Harness) -> None:
        empty = await stats(h, keys["root"])
        assert set(empty) == STATS
        assert empty["enabled"] is True and empty["backend"] == "memory"
        assert empty["healthy"] is True and empty["error"] is None
        assert (empty["entries"], empty["bytes"], empty["hits"], empty["misses"]) == (0, 0, 0, 0)
        assert empty["max_bytes"] == 256 * 2**20 and empty["ttl_s"] == 24 * 3600
        await fill(h, keys, "alice", "bob")
        sampled = {"model": SMOL, "messages": HI, "temperature": 1}
        resp = await h.post("/v1/chat/completions", sampled, headers=bearer(keys["alice"]))
        await json_of(resp)
        assert resp.headers["x-llmd-cache"] == "bypass"
        now = await stats(h, keys["root"])
        assert (now["entries"], now["hits"], now["misses"], now["bypasses"]) == (2, 2, 2, 1)
        assert now["stored"] == 2 and now["errors"] == 0
        assert 0 < now["bytes"] < now["max_bytes"]

    serve(tmp_path, test)


def test_clear_one_key_the_shared_scope_or_everything(tmp_path: Path, keys: dict[str, str]) -> None:
    async def test(h: Harness) -> None:
        await fill(h, keys, "alice", "bob", "carol")  # carol files in the shared scope
        assert await ask(h, keys["root"], "another question") == "miss"
        assert (await stats(h, keys["root"]))["entries"] == 4
        assert await clear(h, keys["root"], "?key=alice") == {"deleted": 1}
        assert await ask(h, keys["alice"]) == "miss"  # computed again, and kept again
        assert await ask(h, keys["bob"]) == "hit"
        assert await clear(h, keys["root"], "?key=nobody") == {"deleted": 0}
        assert await clear(h, keys["root"], "?shared=true") == {"deleted": 1}
        assert await ask(h, keys["carol"]) == "miss"
        assert await clear(h, keys["root"], "?shared=false") == {"deleted": 4}
        assert (await stats(h, keys["root"]))["entries"] == 0
        assert await ask(h, keys["bob"]) == "miss"
        assert await clear(h, keys["root"]) == {"deleted": 1}
        cleared = await audited(h, keys["root"], "cache.cleared", 5)
        assert [(e["target"], e["detail"], e["actor"]) for e in cleared] == [
            ("key:alice", {"deleted": 1}, "key:root"),
            ("key:nobody", {"deleted": 0}, "key:root"),
            ("shared", {"deleted": 1}, "key:root"),
            ("*", {"deleted": 4}, "key:root"),
            ("*", {"deleted": 1}, "key:root"),
        ]

    serve(tmp_path, test, config={**USAGE_ON, "cache.keys": {"carol": "shared"}})


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?keys=alice", "keys"),  # misspelt: never "every entry"
        ("?key=", "key"),
        ("?key=alice&shared=true", "shared"),
        ("?shared=yes", "shared"),
        ("?key=alice&key=bob", "key"),
    ],
)
def test_a_clear_it_cannot_read_deletes_nothing(
    tmp_path: Path, keys: dict[str, str], query: str, param: str
) -> None:
    async def test(h: Harness) -> None:
        await fill(h, keys, "alice")
        resp = await h.client.delete(f"/api/v1/cache{query}", headers=bearer(keys["root"]))
        await error_of(resp, 400, param=param, type_="invalid_request_error")
        assert (await stats(h, keys["root"]))["entries"] == 1

    serve(tmp_path, test)


def test_a_failing_backend_is_a_503_and_unhealthy_stats(
    tmp_path: Path, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: MemoryStore, *args: Any) -> Any:
        raise ConnectionError("the backend is down")

    async def test(h: Harness) -> None:
        await fill(h, keys, "alice")
        monkeypatch.setattr(MemoryStore, "clear", broken)
        for query in ("", "?key=alice", "?shared=true"):
            resp = await h.client.delete(f"/api/v1/cache{query}", headers=bearer(keys["root"]))
            error = await error_of(resp, 503, code="cache_unavailable", type_="server_error")
            assert "the backend is down" in error["message"]
        monkeypatch.setattr(MemoryStore, "stats", broken)
        now = await stats(h, keys["root"])
        assert now["healthy"] is False and "the backend is down" in now["error"]
        # Each operator's call asks the backend (it is never rested for them) and counts.
        assert now["entries"] is None and now["errors"] == 4
        # Revoking a key is not stopped by the cache: it is audited as not deleted.
        revoked = await h.client.delete("/api/v1/keys/alice", headers=bearer(keys["root"]))
        assert (await json_of(revoked))["status"] == "revoked"
        (entry,) = await audited(h, keys["root"], "cache.cleared", 1)
        assert entry["target"] == "key:alice" and entry["detail"]["reason"] == "key.revoked"
        assert "the backend is down" in entry["detail"]["error"]

    serve(tmp_path, test, config=USAGE_ON)


# -- revoking and rotating keys ------------------------------------------------------------------


def test_revoking_a_key_in_the_admin_api_deletes_its_cached_answers(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    async def test(h: Harness) -> None:
        await fill(h, keys, "alice", "bob")
        assert await ask(h, keys["alice"], "a second question") == "miss"
        revoked = await h.client.delete("/api/v1/keys/alice", headers=bearer(keys["root"]))
        assert (await json_of(revoked))["status"] == "revoked"
        assert (await stats(h, keys["root"]))["entries"] == 1
        assert await ask(h, keys["bob"]) == "hit"
        (entry,) = await audited(h, keys["root"], "cache.cleared", 1)
        assert entry["target"] == "key:alice" and entry["actor"] == "key:root"
        assert entry["detail"] == {"deleted": 2, "reason": "key.revoked"}
        # The key's own audit entry is as it was.
        (revoke,) = await audit(h, keys["root"], "key.revoked")
        assert revoke["target"] == "alice" and revoke["detail"] == {"responses": 0}

    serve(tmp_path, test, config=USAGE_ON)


def test_a_key_revoked_or_deleted_in_the_keys_file_loses_its_cached_answers(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """As `llmd keys revoke` does it: the file changes, the daemon reloads it (its watcher, or
    SIGHUP); a rotated key keeps its entries."""
    path = keys_file(tmp_path)

    async def test(h: Harness) -> None:
        registry = h.client.server.app[AUTH].registry
        await fill(h, keys, "alice", "bob", "carol")
        await asyncio.to_thread(rotate_key, path, "bob")
        await registry.reload()
        assert (await stats(h, keys["root"]))["entries"] == 3
        await asyncio.to_thread(revoke_key, path, "alice")
        await registry.reload()
        assert (await stats(h, keys["root"]))["entries"] == 2
        left = read_keys_file(path)
        del left["carol"]
        await asyncio.to_thread(write_keys_file, path, left)
        await registry.reload()
        assert (await stats(h, keys["root"]))["entries"] == 1
        cleared = await audited(h, keys["root"], "cache.cleared", 2)
        assert [(e["target"], e["actor"], e["detail"]) for e in cleared] == [
            ("key:alice", "system", {"deleted": 1, "reason": "keys.reloaded"}),
            ("key:carol", "system", {"deleted": 1, "reason": "keys.reloaded"}),
        ]

    serve(tmp_path, test, config=USAGE_ON)


def test_the_keys_file_watcher_deletes_a_revoked_keys_answers(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    async def test(h: Harness) -> None:
        cache = h.client.server.app[CACHE]
        await fill(h, keys, "alice", "bob")
        await asyncio.to_thread(revoke_key, keys_file(tmp_path), "alice")
        entries: list[int | None] = []

        async def count() -> None:
            entries.append((await cache.stats())["entries"])

        for _ in range(1000):  # the watcher looks at the file every second
            await count()
            if entries[-1] == 1:
                break
            await asyncio.sleep(0.01)
        assert entries[-1] == 1, entries
        assert await ask(h, keys["bob"]) == "hit"

    serve(tmp_path, test)


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def admin_env(keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(ADMIN_KEY_ENV, keys["root"])
    yield


async def llmd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`llmd ARGV` in a thread (its urllib call is answered by the app on this loop)."""
    capsys.readouterr()
    status = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_llmd_cache_stats_and_clear(
    tmp_path: Path,
    keys: dict[str, str],
    admin_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def test(h: Harness) -> None:
        url = str(h.client.make_url("")).rstrip("/")
        await fill(h, keys, "alice", "bob", "carol")
        status, out, _ = await llmd(capsys, "cache", "stats", "--json", "--url", url)
        assert status == 0 and json.loads(out) == await stats(h, keys["root"])
        assert json.loads(out)["entries"] == 3
        status, out, _ = await llmd(capsys, "cache", "stats", "--url", url)
        assert status == 0
        lines = dict(line.split(maxsplit=1) for line in out.splitlines())
        assert lines["backend"] == "memory, healthy"
        assert lines["entries"] == "3" and lines["hits"] == "3" and lines["misses"] == "3"
        assert lines["bytes"].endswith(" of 256.0 MiB")
        assert out.splitlines()[-1] == "hit ratio  50% of 6 lookups"
        status, out, _ = await llmd(capsys, "cache", "clear", "--key", "alice", "--url", url)
        assert (status, out) == (0, "deleted 1 cache entry of key 'alice'\n")
        status, out, _ = await llmd(capsys, "cache", "clear", "--shared", "--url", url)
        assert (status, out) == (0, "deleted 1 shared cache entry\n")
        status, out, _ = await llmd(capsys, "cache", "clear", "--json", "--url", url)
        assert (status, json.loads(out)) == (0, {"deleted": 1})
        # An empty name is refused by the daemon, not taken for every entry.
        await fill(h, keys, "bob")
        status, out, err = await llmd(capsys, "cache", "clear", "--key", "", "--url", url)
        assert (status, out) == (1, "") and err.startswith("llmd: 400: ")
        assert (await stats(h, keys["root"]))["entries"] == 1

    serve(tmp_path, test, config={"cache.keys": {"carol": "shared"}})


def test_llmd_cache_without_an_admin_key_says_why(
    tmp_path: Path, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    async def test(h: Harness) -> None:
        url = str(h.client.make_url("")).rstrip("/")
        status, out, err = await llmd(capsys, "cache", "stats", "--url", url)
        assert (status, out) == (1, "")
        assert err.startswith("llmd: 401: You didn't provide an API key.")

    serve(tmp_path, test)


def _config(tmp_path: Path) -> Path:
    """A config for the CLI: the harness's keys file, a usage database of its own."""
    path = tmp_path / "cli.toml"
    path.write_text(
        f'models_dir = "{tmp_path}"\n'
        f'[usage]\ndatabase = "{tmp_path / "cli-usage.db"}"\n'
        f'[auth]\nkeys_file = "{keys_file(tmp_path)}"\n'
    )
    return path


def test_purging_a_keys_usage_deletes_its_cached_answers(
    tmp_path: Path,
    keys: dict[str, str],
    admin_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(tmp_path)

    async def test(h: Harness) -> None:
        url = str(h.client.make_url("")).rstrip("/")
        await fill(h, keys, "alice", "bob")
        argv = ["usage", "purge", "--before", "2026-01-01", "--key", "alice"]
        status, out, err = await llmd(capsys, *argv, "--config", str(config), "--url", url)
        assert status == 0, err
        assert out.splitlines() == [
            "deleted 0 usage record(s) and 0 stored response(s) before 2026-01-01",
            "deleted 1 cache entry of key 'alice'",
        ]
        assert await ask(h, keys["alice"]) == "miss"
        assert await ask(h, keys["bob"]) == "hit"

    serve(tmp_path, test)


def test_a_purge_that_cannot_reach_the_daemon_says_the_entries_remain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    url = "http://127.0.0.1:9"  # discard: nothing answers HTTP there
    argv = ["usage", "purge", "--before", "2026-01-01", "--key", "alice", "--config", str(config)]
    assert cli.main([*argv, "--url", url]) == 0
    out, err = capsys.readouterr()
    assert out == "deleted 0 usage record(s) and 0 stored response(s) before 2026-01-01\n"
    assert err.startswith("llmd usage: key 'alice''s cached answers were not deleted (")
    assert err.endswith(
        "they remain until their TTL, or `llmd cache clear --key alice` while the daemon runs\n"
    )


def test_rendered_stats_of_a_failing_backend() -> None:
    text = render(
        {
            "enabled": False,
            "backend": "redis",
            "healthy": False,
            "error": "read: timed out",
            "entries": None,
            "bytes": None,
            "max_bytes": None,
            "hits": 0,
            "misses": 0,
            "bypasses": 7,
            "errors": 2,
        }
    )
    assert text.splitlines() == [
        "backend    redis, FAILING (read: timed out), disabled ([cache] enabled = false)",
        "entries    -",
        "bytes      -",
        "hits       0",
        "misses     0",
        "bypasses   7",
        "errors     2",
        "hit ratio  -",
    ]
