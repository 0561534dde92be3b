"""Keys, authentication, rights, limits and fair sharing, through the real daemon and model.

One daemon with keys serves most tests (`keyed`); each test makes the keys it needs through
the admin API, so tests do not share limits. Daemons of their own only where the config
differs (listening beyond loopback, fair sharing on two slots).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from llmd.auth.keys import add_key
from tests.e2e.conftest import SMOL, Daemon, bearer, start_daemon

KEYED_CONFIG = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 512
parallel = 4

[auth]
failure_delay_s = 0.01
failure_delay_max_s = 0.05

[models.smollm2]
path = "{SMOL}"
aliases = ["smol"]

[models.other]
path = "{SMOL}"
parallel = 1
"""

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon whose keys file holds one admin key before start; yields it and the secret."""
    tmp = tmp_path_factory.mktemp("keyed")
    _, secret = add_key(tmp / "keys.toml", "root", admin=True)
    d = start_daemon(tmp, KEYED_CONFIG)
    yield d, secret
    assert d.stop() == 0, d.logs()


def new_key(d: Daemon, admin: str, **fields: Any) -> str:
    name = fields.pop("name", f"k-{uuid.uuid4().hex[:8]}")
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name, **fields}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 201, resp.text
    secret = resp.json()["secret"]
    assert isinstance(secret, str) and secret.startswith("sk-llmd-")
    return secret


def complete(d: Daemon, secret: str, max_tokens: int = 5, **extra: Any) -> httpx.Response:
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    body.update(extra)
    return httpx.post(d.url + "/v1/completions", json=body, headers=bearer(secret), timeout=120)


def error_of(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


# -- authentication and rights -------------------------------------------------------------


def test_admin_api_add_rotate_revoke_with_audit(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    name = f"ops-{uuid.uuid4().hex[:6]}"
    secret = new_key(d, admin, name=name, rpm=100)
    assert complete(d, secret, 1).status_code == 200
    listed = httpx.get(d.url + "/api/v1/keys", headers=bearer(admin), timeout=10).json()["data"]
    mine = next(k for k in listed if k["name"] == name)
    assert mine["status"] == "active" and mine["rpm"] == 100
    assert "hash" not in mine and "secret" not in mine
    assert secret not in str(listed)
    # Adding the same name again: 409.
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 409
    rotated = httpx.post(
        d.url + f"/api/v1/keys/{name}/rotate", headers=bearer(admin), timeout=30
    ).json()["secret"]
    error_of(complete(d, secret, 1), 401, "invalid_api_key")
    assert complete(d, rotated, 1).status_code == 200
    assert httpx.delete(
        d.url + f"/api/v1/keys/{name}", headers=bearer(admin), timeout=30
    ).is_success
    err = error_of(complete(d, rotated, 1), 401, "invalid_api_key")
    assert "revoked" in err["message"]
    shown = httpx.get(d.url + f"/api/v1/keys/{name}", headers=bearer(admin), timeout=10).json()
    assert shown["status"] == "revoked"
    audit = httpx.get(
        d.url + "/api/v1/audit", params={"order": "asc"}, headers=bearer(admin), timeout=10
    ).json()["data"]
    actions = [(e["action"], e["actor"], e["client"]) for e in audit if e["target"] == name]
    assert actions == [
        ("key.added", "key:root", "127.0.0.1"),
        ("key.rotated", "key:root", "127.0.0.1"),
        ("key.revoked", "key:root", "127.0.0.1"),
    ]


# -- limits --------------------------------------------------------------------------------


def _name_of(d: Daemon, admin: str, secret: str) -> str:
    prefix = secret.split("_")[0]
    keys = httpx.get(d.url + "/api/v1/keys", headers=bearer(admin), timeout=10).json()["data"]
    return str(next(k["name"] for k in keys if k["prefix"] == prefix))


# -- the keys file -------------------------------------------------------------------------


def _wait(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_prometheus_scrapes_with_a_metrics_key(keyed: tuple[Daemon, str]) -> None:
    """With keys in force /metrics (every key's name and usage) is not open to any local
    process: a key with the metrics right, as Prometheus' `authorization` sends it, reads it."""
    d, admin = keyed
    scraper = new_key(d, admin, name="prometheus", metrics=True)
    user = new_key(d, admin, name="metrics-user")
    assert complete(d, user, 1).status_code == 200
    error_of(httpx.get(d.url + "/metrics", timeout=10), 401, "missing_api_key")
    error_of(
        httpx.get(d.url + "/metrics", headers=bearer(user), timeout=10),
        403,
        "metrics_key_required",
    )
    scraped = httpx.get(d.url + "/metrics", headers=bearer(scraper), timeout=10)
    assert scraped.status_code == 200, scraped.text
    assert 'key="metrics-user"' in scraped.text
    listed = httpx.get(d.url + "/api/v1/keys/prometheus", headers=bearer(admin), timeout=10)
    assert listed.json()["metrics"] is True


def test_cli_keys_and_hand_edits(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    config = d.log.parent / "llmd.toml"
    keys_file = d.log.parent / "keys.toml"
    cli = [sys.executable, "-m", "llmd"]
    out = subprocess.run(
        [
            *cli,
            "keys",
            "add",
            "cli-user",
            "--rpm",
            "50",
            "--models",
            "smollm2",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("sk-llmd-")
    assert secret not in keys_file.read_text()  # only the hash is stored
    # The daemon notices the file changed.
    _wait(lambda: complete(d, secret, 1).status_code == 200)
    listing = subprocess.run(
        [*cli, "keys", "list", "--config", str(config)], capture_output=True, text=True, check=True
    ).stdout
    assert "cli-user" in listing and "active" in listing
    # An edit that breaks the file: the old keys stay in force, the error names the line.
    good = keys_file.read_text()
    broken_line = len(good.splitlines()) + 1
    keys_file.write_text(good + "rpm = = 3\n")
    _wait(lambda: "keys file refused" in d.logs())
    assert f"line {broken_line}" in d.logs()
    assert complete(d, secret, 1).status_code == 200
    # A valid hand edit (revoking by hand), applied on SIGHUP at the latest.
    keys_file.write_text(
        good.replace("[keys.cli-user]\n", "[keys.cli-user]\nrevoked = 2026-01-01T00:00:00Z\n")
    )
    d.proc.send_signal(signal.SIGHUP)
    _wait(lambda: complete(d, secret, 1).status_code == 401)
    assert complete(d, admin, 1).status_code == 200
    audit = subprocess.run(
        [*cli, "audit", "--config", str(config)], capture_output=True, text=True, check=True
    ).stdout
    assert "key.added" in audit and "cli-user" in audit and "keys.reloaded" in audit


# -- beyond loopback -----------------------------------------------------------------------


# -- fair sharing --------------------------------------------------------------------------


FAIR_CONFIG = f"""
[server]
max_queue = 64

[engine]
ctx_per_seq = 256
parallel = 2

[models.smollm2]
path = "{SMOL}"
"""


def test_fair_sharing_through_the_daemon(tmp_path: Path) -> None:
    _, flood = add_key(tmp_path / "keys.toml", "flood")
    _, single = add_key(tmp_path / "keys.toml", "single")
    d = start_daemon(tmp_path, FAIR_CONFIG)
    finished: list[str] = []

    async def one(secret: str, tag: str) -> None:
        client = openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)
        out = await client.completions.create(
            model="smollm2", prompt=PROMPT, max_tokens=16, extra_body={"ignore_eos": True}
        )
        assert out.usage is not None and out.usage.completion_tokens == 16
        finished.append(tag)
        await client.close()

    async def scenario() -> None:
        floods = [asyncio.create_task(one(flood, "A")) for _ in range(16)]
        while True:  # the flood is queued behind the two running slots
            health = await asyncio.to_thread(
                lambda: httpx.get(d.url + "/api/v1/health", headers=bearer(flood), timeout=10)
            )
            if health.json()["models"][0]["queued"] >= 10:
                break
            await asyncio.sleep(0.05)
        await one(single, "B")
        await asyncio.gather(*floods)

    try:
        asyncio.run(scenario())
    finally:
        assert d.stop() == 0, d.logs()
    # FIFO would serve all 16 flood requests first; round-robin by key admits B at the next
    # free slot: at most the two running plus one more flood request finish before it.
    assert finished.count("A") == 16
    assert finished.index("B") <= 4, finished
