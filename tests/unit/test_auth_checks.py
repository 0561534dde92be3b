"""What a key check costs and who waits for it (llmd/auth/registry.py, llmd/auth/pacing.py):
every refused secret costs one hash with the same parameters (a wrong id as a wrong secret),
a verified secret none, a failing address waits before its next hash, parallel guesses are
refused unchecked past the longest delay, and hashes run a few at a time. The hash is counted
by wrapping `check_hash` where the registry calls it; time is a fake clock, never measured."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from llmd.auth import registry as registry_module
from llmd.auth.keys import add_key, check_hash
from llmd.auth.limits import RateLimited
from llmd.auth.middleware import AUTH
from llmd.auth.pacing import Pacing
from llmd.auth.registry import HASHES_AT_ONCE, KeyRegistry
from llmd.settings import AuthSettings
from tests.unit.app_harness import Harness, error_of, keys_file, serve

Hashed = list[tuple[str, str]]
"""(secret, the stored hash's parameters `scrypt$N$r$p`) per check_hash call."""


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Hashed:
    calls: Hashed = []

    def counted(secret: str, stored: str) -> bool:
        calls.append((secret, "$".join(stored.split("$")[:4])))
        return check_hash(secret, stored)

    monkeypatch.setattr(registry_module, "check_hash", counted)
    return calls


def registry_with_key(tmp_path: Path) -> tuple[KeyRegistry, str]:
    path = tmp_path / "keys.toml"
    _, secret = add_key(path, "root")
    registry = KeyRegistry(path)
    registry.load()
    return registry, secret


def test_a_wrong_id_costs_what_a_wrong_secret_costs(tmp_path: Path, hashed: Hashed) -> None:
    registry, secret = registry_with_key(tmp_path)
    key_id = secret.split("_")[0]
    wrong_secret = key_id + "_" + "A" * 43
    wrong_id = "sk-llmd-000000000000_" + secret.split("_", 1)[1]
    malformed = "sk-not-ours\udcff"  # a lone surrogate, as aiohttp may decode a header

    async def main() -> None:
        for bad in (wrong_secret, wrong_id, malformed):
            assert await registry.verify(bad) == (None, "Incorrect API key provided.")
        key, _ = await registry.verify(secret)
        assert key is not None and key.name == "root"
        key, _ = await registry.verify(secret)  # verified before: from the cache
        assert key is not None

    asyncio.run(main())
    assert [s for s, _ in hashed] == [wrong_secret, wrong_id, malformed, secret]
    assert {params for _, params in hashed} == {"scrypt$16384$8$1"}


def test_parallel_requests_with_one_new_secret_share_one_hash(
    tmp_path: Path, hashed: Hashed
) -> None:
    registry, secret = registry_with_key(tmp_path)

    async def main() -> None:
        results = await asyncio.gather(*(registry.verify(secret) for _ in range(8)))
        assert all(key is not None for key, _ in results)

    asyncio.run(main())
    assert len(hashed) == 1


def test_hashes_run_a_few_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = registry_with_key(tmp_path)
    lock = threading.Lock()
    release = threading.Event()
    running = [0, 0]  # now, most at once

    def slow(secret: str, stored: str) -> bool:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return False

    monkeypatch.setattr(registry_module, "check_hash", slow)

    async def main() -> None:
        guesses = [f"sk-llmd-{i:012x}_{'x' * 40}" for i in range(HASHES_AT_ONCE + 3)]
        tasks = [asyncio.create_task(registry.verify(g)) for g in guesses]
        for _ in range(500):  # until the cap is reached...
            if running[0] >= HASHES_AT_ONCE:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # ...and a while longer: without the cap, more would start
        release.set()
        assert [key for key, _ in await asyncio.gather(*tasks)] == [None] * len(guesses)

    asyncio.run(main())
    assert running[1] == HASHES_AT_ONCE


class FakeTime:
    """A clock that moves only when someone sleeps; the sleeps in order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_failing_address_waits_before_its_next_hash(tmp_path: Path, hashed: Hashed) -> None:
    registry, _ = registry_with_key(tmp_path)
    time = FakeTime()
    settings = AuthSettings(failure_delay_s=0.5, failure_delay_max_s=2.0)
    pacing = Pacing(lambda: settings, clock=time.clock, sleep=time.sleep)
    events: list[Any] = []
    original = pacing.sleep

    async def sleep(seconds: float) -> None:
        events.append(("wait", seconds))
        await original(seconds)

    pacing.sleep = sleep

    async def attempt(address: str, n: int) -> None:
        hashes = len(hashed)
        key, _ = await registry.verify(
            f"sk-llmd-{n:012x}_{'x' * 40}", lambda: pacing.wait_turn(address)
        )
        assert key is None
        events.append(("hash", address) if len(hashed) > hashes else ("no hash", address))
        pacing.failed(address)

    async def main() -> None:
        for n in range(5):
            await attempt("10.0.0.1", n)
        await attempt("10.0.0.2", 99)  # another address is not held up

    asyncio.run(main())
    a = "10.0.0.1"
    assert events == [
        ("hash", a),
        ("wait", 0.5),
        ("hash", a),
        ("wait", 1.0),
        ("hash", a),
        ("wait", 2.0),
        ("hash", a),
        ("wait", 2.0),  # failure_delay_max_s
        ("hash", a),
        ("hash", "10.0.0.2"),
    ]
    # A success forgets the address's failures.
    pacing.succeeded(a)
    asyncio.run(pacing.wait_turn(a))
    assert time.slept[-1] == 2.0 and len(time.slept) == 4


def test_a_turn_further_off_than_the_longest_delay_is_refused() -> None:
    time = FakeTime()
    settings = AuthSettings(failure_delay_s=0.5, failure_delay_max_s=2.0)
    pacing = Pacing(lambda: settings, clock=time.clock, sleep=lambda _: asyncio.sleep(0))

    async def main() -> None:
        for _ in range(3):  # turns at 0, 0.5 and 1.5 s (the clock stands still), the next 3.5
            await pacing.wait_turn("a")
        with pytest.raises(RateLimited) as refused:
            await pacing.wait_turn("a")
        assert refused.value.status == 429 and refused.value.headers() == {"Retry-After": "4"}
        await pacing.wait_turn("b")

    asyncio.run(main())


def test_parallel_guesses_are_paced_and_refused_unchecked(tmp_path: Path, hashed: Hashed) -> None:
    """32 connections from one address at once: only the checks whose turn comes within
    failure_delay_max_s are made (3 on a clock that stands still here: at 0, 0.5 and 1.5 s,
    the next would be at 3.5); the others are 429 with Retry-After, no hash. A key verified
    before still works at once from that address."""
    _, secret = add_key(keys_file(tmp_path), "root")

    async def test(h: Harness) -> None:
        assert (await h.get("/v1/models", {"Authorization": f"Bearer {secret}"})).status == 200
        pacing = h.client.app[AUTH].pacing
        time = FakeTime()
        pacing.clock = time.clock
        pacing.sleep = lambda _: asyncio.sleep(0)  # a wait passes, the clock stands still
        before = len(hashed)
        guesses = [
            h.get("/v1/models", {"Authorization": f"Bearer sk-llmd-{n:012x}_{'x' * 40}"})
            for n in range(32)
        ]
        responses = await asyncio.gather(*guesses)
        checked = len(hashed) - before
        assert checked == 3
        assert sorted(r.status for r in responses) == [401] * 3 + [429] * 29
        refused = next(r for r in responses if r.status == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        error = await error_of(refused, 429, code="rate_limit_exceeded")
        assert "Too many failed authentications from your address" in error["message"]
        ok = await h.get("/v1/models", {"Authorization": f"Bearer {secret}"})
        assert ok.status == 200 and len(hashed) - before == checked

    serve(
        tmp_path,
        test,
        config={"auth.failure_delay_s": 0.5, "auth.failure_delay_max_s": 2.0},
    )


def test_repeated_failures_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, hashed: Hashed
) -> None:
    add_key(keys_file(tmp_path), "root")
    caplog.set_level("INFO", logger="llmd.auth")

    async def test(h: Harness) -> None:
        for _ in range(4):
            await h.get("/v1/models", {"Authorization": "Bearer sk-llmd-000000000000_" + "x" * 40})
        await h.get("/v1/models")  # no key at all: a failure too, no hash

    serve(tmp_path, test)
    assert "failed authentication #4 from 127.0.0.1: its next key check waits" in caplog.text
    assert "failed authentication #5 from 127.0.0.1" in caplog.text
    assert len(hashed) == 4


def test_the_metrics_right_is_written_only_when_set(tmp_path: Path) -> None:
    """A keys file without `metrics` stays readable by llmd versions from before that right."""
    path = tmp_path / "keys.toml"
    add_key(path, "plain")
    assert "metrics =" not in path.read_text()
    add_key(path, "prometheus", metrics=True)
    assert "metrics = true" in path.read_text()
