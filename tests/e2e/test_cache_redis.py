"""The response cache on Redis end to end: real daemons, the real SmolLM2, a real redis-server
of the test's own (tests/redis_server.py). Two daemons sharing one Redis answer each other's
requests from it; a Redis killed mid-run leaves every request answered (computed, `bypass`)
and, started again on the same port, is used again without restarting the daemon."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

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


def test_redis_killed_mid_run_then_back(
    make_daemon: Callable[..., Daemon], redis_server: RedisServer
) -> None:
    d = make_daemon(config(redis_server))
    prompt = "What is the capital of Italy?"
    text, cache, _ = ask(d, prompt)
    assert cache == "miss"
    assert ask(d, prompt)[:2] == (text, "hit")

    redis_server.kill()
    # Every request is answered while Redis is down: computed, as if there were no cache.
    assert ask(d, prompt)[:2] == (text, "bypass")
    for n in range(3):
        assert ask(d, f"Count to {n + 2}.")[1] == "bypass"
    assert ask(d, prompt)[:2] == (text, "bypass")

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

    logs = d.logs()
    assert "answering without the cache" in logs  # the warning while it was down
    for piece in ("pw/of", "llmd@redis", "pw%2Fof"):
        assert piece not in logs  # the URL's password never in the log
