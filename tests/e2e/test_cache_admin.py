"""The operator's controls of the response cache on the real daemon and model: three keys fill
the cache with greedy answers, `llmd cache stats` shows them, `llmd keys revoke` of one key
(the CLI, editing the keys file under the running daemon) and `llmd usage purge --key` of
another (the CLI, asking the daemon to delete the key's entries) delete that key's entries
and not the others', and `llmd cache clear` empties the cache. Every command is the CLI in a process
of its own, with the admin key in $LLMD_ADMIN_KEY."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai

from llmd.auth.keys import add_key
from tests.e2e.conftest import ONE_SMALL_MODEL, Daemon, bearer

CONFIG = ONE_SMALL_MODEL
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name a planet."]


def llmd(d: Daemon, admin: str, *args: str) -> str:
    """`llmd ARGS --config` of the daemon, as its operator runs it; its output."""
    argv = [sys.executable, "-m", "llmd", *args, "--config", str(d.log.parent / "llmd.toml")]
    if args[0] in ("cache", "usage"):
        argv += ["--url", d.url]  # the daemon was given its port on the command line
    env = {**os.environ, "LLMD_ADMIN_KEY": admin}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def stats(d: Daemon, admin: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(llmd(d, admin, "cache", "stats", "--json"))
    return answer


def ask(d: Daemon, secret: str, question: str) -> tuple[str, str]:
    """A greedy chat completion: (its text, x-llmd-cache)."""
    with openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="smollm2",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=8,
            timeout=120,
        )
    answer = raw.parse()
    return answer.choices[0].message.content or "", raw.headers["x-llmd-cache"]


def new_key(d: Daemon, admin: str, name: str) -> str:
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["secret"])


def wait_for(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.2)


def test_stats_revoke_and_clear_through_the_cli(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    _, admin = add_key(tmp_path / "d0" / "keys.toml", "root", admin=True)
    d = make_daemon(CONFIG)
    secrets = {name: new_key(d, admin, name) for name in ("alice", "bob", "carol")}
    assert stats(d, admin)["entries"] == 0

    answers: dict[tuple[str, str], str] = {}
    for name, secret in secrets.items():
        for question in QUESTIONS:
            text, cache = ask(d, secret, question)
            assert cache == "miss" and text, (name, question, text)
            answers[name, question] = text
    for (name, question), text in answers.items():
        assert ask(d, secrets[name], question) == (text, "hit")

    filled = stats(d, admin)
    assert filled["entries"] == 9 and filled["healthy"] is True
    assert (filled["hits"], filled["misses"]) == (9, 9)
    table = llmd(d, admin, "cache", "stats")
    assert "entries    9\n" in table and "hit ratio  50% of 18 lookups" in table

    # The CLI edits the keys file; the daemon sees it within a second and deletes alice's.
    out = llmd(d, admin, "keys", "revoke", "alice")
    assert out.startswith("key 'alice' revoked")
    wait_for(lambda: stats(d, admin)["entries"] == 6, "alice's entries deleted")
    for name in ("bob", "carol"):
        for question in QUESTIONS:
            assert ask(d, secrets[name], question) == (answers[name, question], "hit")

    # Purging carol's data (her usage, which she has none of before 2026) takes her cached
    # answers with it, whatever their age; bob's stay. Carol's key still works: she misses.
    out = llmd(d, admin, "usage", "purge", "--before", "2026-01-01", "--key", "carol")
    assert out.splitlines()[-1] == "deleted 3 cache entries of key 'carol'", out
    assert stats(d, admin)["entries"] == 3
    assert ask(d, secrets["carol"], QUESTIONS[0]) == (answers["carol", QUESTIONS[0]], "miss")
    for question in QUESTIONS:
        assert ask(d, secrets["bob"], question) == (answers["bob", question], "hit")

    assert llmd(d, admin, "cache", "clear") == "deleted 4 cache entries\n"
    assert stats(d, admin)["entries"] == 0
    assert ask(d, secrets["bob"], QUESTIONS[0])[1] == "miss"

    audit = httpx.get(
        d.url + "/api/v1/audit", params={"order": "asc"}, headers=bearer(admin), timeout=10
    ).json()["data"]
    cleared = [
        (e["actor"], e["target"], e["detail"]) for e in audit if e["action"] == "cache.cleared"
    ]
    assert cleared == [
        ("system", "key:alice", {"deleted": 3, "reason": "keys.reloaded"}),
        ("key:root", "key:carol", {"deleted": 3}),
        ("key:root", "*", {"deleted": 4}),
    ]
    assert d.stop() == 0, d.tail()
