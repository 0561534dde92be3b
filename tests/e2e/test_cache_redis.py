"""The response cache on Redis end to end: real daemons, the real SmolLM2, a real redis-server
of the test's own (tests/redis_server.py). Two daemons sharing one Redis answer each other's
requests from it; a Redis killed mid-run leaves every request answered (computed, `bypass`)
and, started again on the same port, is used again without restarting the daemon; so does a
Redis frozen mid-run (too slow: it answers nothing), once it answers again."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2 as httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.api import SMOL, SMOL_FILE
from tests.redis_server import RedisServer, running

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

PASSWORD = "pw/of:llmd@redis"


def config(redis: RedisServer) -> str:
    # Both daemons alike: the entries' keys hold the load options that change the arithmetic.
    return f"""
[server]
default_model = "{SMOL}"

[engine]
ctx_per_seq = 512
parallel = 2

[models.{SMOL}]
path = "{SMOL_FILE}"

[cache]
backend = "redis"
redis_url = "{redis.url}"
redis_timeout_s = 2.0
ttl = "10m"
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running(tmp_path / "redis", password=PASSWORD) as server:
        yield server


def ask(d: Daemon, prompt: str) -> tuple[str, str | None, str]:
    """(the answer's text, its x-llmd-cache header, its id) of a greedy chat completion."""
    raw = d.client().chat.completions.with_raw_response.create(
        model=SMOL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=12,
    )
    assert raw.http_response.status_code == 200
    body = raw.parse()
    return body.choices[0].message.content or "", raw.headers.get("x-llmd-cache"), body.id


def cache_metrics(d: Daemon) -> dict[str, float]:
    """The daemon's unlabelled llmd_cache_* samples by name (a scrape asks the backend)."""
    text = httpx.get(d.url + "/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("llmd_cache_") and not sample.labels
    }


def test_two_daemons_share_one_redis(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    a = make_daemon(config(redis_server))
    b = make_daemon(config(redis_server))
    prompt = "Name three colours of the rainbow."
    text_a, cache_a, id_a = ask(a, prompt)
    assert cache_a == "miss"
    text_b, cache_b, id_b = ask(b, prompt)
    assert (text_b, cache_b) == (text_a, "hit")
    assert id_b != id_a  # a hit is a new answer of the same content
    # And back: B's own miss is A's hit.
    other = "Say hello in French."
    text_b, cache_b, _ = ask(b, other)
    assert cache_b == "miss"
    assert ask(a, other)[:2] == (text_b, "hit")
    # Two entries in Redis, no keys in force (the anonymous scope), each expiring within the
    # configured TTL: Redis itself drops them.
    with redis.Redis.from_url(redis_server.url) as r:
        names = sorted(r.scan_iter("llmd:cache:*"))
        assert len(names) == 2 and all(n.startswith(b"llmd:cache:anonymous:") for n in names)
        assert all(0 < r.pttl(n) <= 600_000 for n in names)


def test_redis_killed_mid_run_then_back(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    d = make_daemon(config(redis_server))
    prompt = "What is the capital of Italy?"
    text, cache, _ = ask(d, prompt)
    assert cache == "miss"
    assert ask(d, prompt)[:2] == (text, "hit")

    assert cache_metrics(d)["llmd_cache_up"] == 1
    errors_before = cache_metrics(d)["llmd_cache_errors_total"]

    redis_server.kill()
    # Every request is answered while Redis is down: computed, as if there were no cache.
    assert ask(d, prompt)[:2] == (text, "bypass")
    for n in range(3):
        assert ask(d, f"Count to {n + 2}.")[1] == "bypass"
    assert ask(d, prompt)[:2] == (text, "bypass")
    down = cache_metrics(d)
    assert down["llmd_cache_up"] == 0
    assert down["llmd_cache_errors_total"] > errors_before, "the failure is counted"

    redis_server.start()  # the same port, empty: nothing was saved
    # Back within the backoff (1 s doubling, at most 30 s): a prompt never asked before is the
    # first to reach Redis again, so it misses; asked again, it hits.
    deadline = time.monotonic() + 90
    for n in itertools.count():
        prompt = f"Name a fruit, please ({n})."
        text, cache, _ = ask(d, prompt)
        if cache != "bypass":
            break
        assert time.monotonic() < deadline, "the cache never came back"
        time.sleep(0.5)
    assert cache == "miss"
    assert ask(d, prompt)[:2] == (text, "hit")
    assert cache_metrics(d)["llmd_cache_up"] == 1

    logs = d.logs()
    assert "answering without the cache" in logs  # the warning while it was down
    for piece in ("pw/of", "llmd@redis", "pw%2Fof"):
        assert piece not in logs  # the URL's password never in the log


def test_a_frozen_redis_is_given_up_on_then_used_again(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    """A Redis that accepts connections and answers nothing (SIGSTOP) is given up on after
    redis_timeout_s: the request is computed. Thawed, it is used again, its entries intact."""
    d = make_daemon(config(redis_server))
    prompt = "Name a large animal."
    text, cache, _ = ask(d, prompt)
    assert cache == "miss"
    assert ask(d, prompt)[:2] == (text, "hit")
    errors_before = cache_metrics(d)["llmd_cache_errors_total"]

    redis_server.pause()
    try:
        assert ask(d, prompt)[:2] == (text, "bypass")
        assert ask(d, "Name a small animal.")[1] == "bypass"
        assert cache_metrics(d)["llmd_cache_errors_total"] > errors_before
    finally:
        redis_server.resume()

    # Back once the rest is over (1 s doubling): the entry kept before the freeze is found.
    deadline = time.monotonic() + 90
    while (found := ask(d, prompt))[1] == "bypass":
        assert time.monotonic() < deadline, "the cache never came back"
        time.sleep(0.5)
    assert found[:2] == (text, "hit")
    assert "answering without the cache" in d.logs()
