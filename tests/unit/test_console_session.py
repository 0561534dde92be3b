"""The console's session store (llmd/console/session.py) on its own: a session for a key, found
by its id until it expires, the oldest dropped past the bound, ended when its key is revoked,
deleted, rotated, expired or made non-admin, and the CSRF token compared whole; the
[console] settings."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from llmd.auth.keys import (
    Key,
    add_key,
    read_keys_file,
    revoke_key,
    rotate_key,
    update_key,
    write_keys_file,
)
from llmd.auth.registry import KeyRegistry
from llmd.console.session import SessionStore, same_secret
from llmd.settings import ConsoleSettings, Settings

TTL = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def registry_with(path: Path, *names: str) -> KeyRegistry:
    for name in names:
        add_key(path, name, admin=True)
    registry = KeyRegistry(path)
    assert registry.load(quiet=True)
    return registry


def key(registry: KeyRegistry, name: str) -> Key:
    return Key(name, registry.keys[name])


def store_of(registry: KeyRegistry, clock: Clock, max_sessions: int = 100) -> SessionStore:
    return SessionStore(registry, lambda: TTL, clock=clock, max_sessions=max_sessions)


def test_a_session_is_found_by_its_id_until_it_expires(tmp_path: Path) -> None:
    registry = registry_with(tmp_path / "keys.toml", "root")
    clock = Clock()
    store = store_of(registry, clock)
    session_id, session = store.create(key(registry, "root"))
    other_id, other = store.create(key(registry, "root"))
    assert session_id != other_id and session.csrf != other.csrf
    assert len(session_id) >= 43 and len(session.csrf) >= 43  # 32 random bytes each
    assert session.key == "root" and session.expires == clock.now + TTL
    assert session.expires_iso() == "2027-01-15T08:10:00+00:00"

    found = store.find(session_id)
    assert found is not None and found[0] == session
    assert found[1] == key(registry, "root")
    assert store.key_of(session_id) == key(registry, "root")
    assert store.find("not-a-session") is None and store.key_of("") is None

    clock.now += TTL - 1
    assert store.find(session_id) is not None
    clock.now += 1
    assert store.find(session_id) is None and store.key_of(other_id) is None
    assert len(store) == 0  # an expired session is dropped when it is looked for


def test_sign_out_ends_the_session_alone(tmp_path: Path) -> None:
    registry = registry_with(tmp_path / "keys.toml", "root")
    store = store_of(registry, Clock())
    first, _ = store.create(key(registry, "root"))
    second, _ = store.create(key(registry, "root"))
    assert store.end(first) is True
    assert store.find(first) is None and store.end(first) is False
    assert store.find(second) is not None


def test_the_oldest_session_goes_past_the_bound_and_expired_ones_first(tmp_path: Path) -> None:
    registry = registry_with(tmp_path / "keys.toml", "root")
    clock = Clock()
    store = store_of(registry, clock, max_sessions=3)
    ids = []
    for _ in range(3):
        ids.append(store.create(key(registry, "root"))[0])
        clock.now += 1
    newest, _ = store.create(key(registry, "root"))
    assert len(store) == 3
    assert store.find(ids[0]) is None
    assert all(store.find(i) is not None for i in [*ids[1:], newest])

    # Expired sessions are dropped before any live one is.
    clock.now += TTL - 2  # ids[1] (made at +1) has expired; ids[2] (at +2) has not
    fresh, _ = store.create(key(registry, "root"))
    assert len(store) == 3
    assert [store.find(i) is not None for i in (ids[1], ids[2], newest, fresh)] == [
        False,
        True,
        True,
        True,
    ]


def test_the_csrf_token_is_compared_whole(tmp_path: Path) -> None:
    registry = registry_with(tmp_path / "keys.toml", "root")
    store = store_of(registry, Clock())
    session_id, session = store.create(key(registry, "root"))
    assert store.csrf_valid(session_id, session.csrf)
    for wrong in ("", session.csrf[:-1], session.csrf + "x", session.csrf.upper(), "é\ud800"):
        assert not store.csrf_valid(session_id, wrong), wrong
    # Another session's token is not this one's.
    other_id, other = store.create(key(registry, "root"))
    assert not store.csrf_valid(session_id, other.csrf)
    assert store.csrf_valid(other_id, other.csrf)
    # An ended session has no valid token.
    store.end(session_id)
    assert not store.csrf_valid(session_id, session.csrf)

    assert same_secret("abc", "abc") and not same_secret("abc", "abd")
    assert not same_secret("abc", "ab") and not same_secret("abc", "")
    assert same_secret("\ud800é", "\ud800é")  # any header text compares, none raises


def test_a_session_ends_when_its_key_changes_in_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    names = ["revoked", "rotated", "deleted", "demoted", "expiring", "kept"]
    registry = registry_with(path, *names)
    now = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    registry.clock = lambda: now
    store = store_of(registry, Clock())
    sessions = {name: store.create(key(registry, name))[0] for name in names}
    assert all(store.key_of(s) is not None for s in sessions.values())

    revoke_key(path, "revoked")
    rotate_key(path, "rotated")
    update_key(path, "demoted", admin=False)
    update_key(path, "expiring", expires=now + dt.timedelta(hours=1))
    keys = read_keys_file(path)
    del keys["deleted"]
    write_keys_file(path, keys)
    # A quiet reload, as the admin API makes: no on_gone hook is called, each use checks.
    assert registry.load(quiet=True)

    live = {name for name, s in sessions.items() if store.key_of(s) is not None}
    assert live == {"expiring", "kept"}
    now += dt.timedelta(hours=1)
    assert store.key_of(sessions["expiring"]) is None
    assert store.key_of(sessions["kept"]) == key(registry, "kept")
    assert len(store) == 1


def test_keys_gone_from_the_file_end_their_sessions_at_once(tmp_path: Path) -> None:
    registry = registry_with(tmp_path / "keys.toml", "alice", "bob")
    store = store_of(registry, Clock())
    alice = [store.create(key(registry, "alice"))[0] for _ in range(2)]
    bob, _ = store.create(key(registry, "bob"))
    asyncio.run(store.forget_keys(["alice"]))
    assert len(store) == 1
    assert store.find(bob) is not None and all(store.find(a) is None for a in alice)


def test_console_settings() -> None:
    console = Settings().console
    assert console.enabled is True and console.session_ttl_s() == 8 * 3600
    assert ConsoleSettings(session_ttl="30m").session_ttl_s() == 1800
    assert ConsoleSettings(session_ttl=90).session_ttl_s() == 90
    for bad in ("0", 0, "-1", "forever"):
        with pytest.raises(ValueError):
            ConsoleSettings(session_ttl=bad)
