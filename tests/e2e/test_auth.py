"""Keys, authentication, rights, limits and fair sharing, through the real daemon and model.

One daemon with keys serves most tests (`keyed`); each test makes the keys it needs through
the admin API, so tests do not share limits. Daemons of their own only where the config
differs (listening beyond loopback, fair sharing on two slots).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
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


def test_missing_wrong_and_malformed_keys_are_401(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    url = d.url + "/v1/models"
    error_of(httpx.get(url, timeout=10), 401, "missing_api_key")
    wrong = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    error_of(httpx.get(url, headers=bearer(wrong), timeout=10), 401, "invalid_api_key")
    error_of(httpx.get(url, headers=bearer("sk-not-ours"), timeout=10), 401, "invalid_api_key")
    error_of(
        httpx.get(url, headers={"Authorization": "Basic x"}, timeout=10), 401, "missing_api_key"
    )
    # Both header styles work.
    assert httpx.get(url, headers=bearer(admin), timeout=10).status_code == 200
    assert httpx.get(url, headers={"x-api-key": admin}, timeout=10).status_code == 200
    # The official client: AuthenticationError on a bad key, works with a good one.
    with pytest.raises(openai.AuthenticationError):
        d.client().models.list()
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=admin, max_retries=0)
    assert {m.id for m in client.models.list().data} >= {"smollm2", "other"}


def test_open_paths_and_api_health(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    assert httpx.get(d.url + "/health", timeout=10).status_code == 200
    assert httpx.get(d.url + "/ready", timeout=10).status_code == 200
    error_of(httpx.get(d.url + "/api/v1/health", timeout=10), 401, "missing_api_key")
    user = new_key(d, admin)
    # /api/v1/health needs a key, any key; every other /api/v1/* path needs an admin key.
    assert httpx.get(d.url + "/api/v1/health", headers=bearer(user), timeout=10).status_code == 200
    for path in ("/api/v1/keys", "/api/v1/usage", "/api/v1/audit"):
        error_of(
            httpx.get(d.url + path, headers=bearer(user), timeout=10), 403, "admin_key_required"
        )
    resp = httpx.post(d.url + "/api/v1/keys", json={"name": "x"}, headers=bearer(user), timeout=10)
    error_of(resp, 403, "admin_key_required")


def test_model_rights(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    secret = new_key(d, admin, models=["other"])
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["other"]
    out = client.completions.create(model="other", prompt=PROMPT, max_tokens=3)
    assert out.usage is not None and out.usage.completion_tokens == 3
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert info.value.code == "model_not_allowed"
    # The default model is smollm2 as well: naming no model does not get around the rule.
    error_of(
        httpx.post(
            d.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 1},
            headers=bearer(secret),
            timeout=30,
        ),
        403,
        "model_not_allowed",
    )
    error_of(
        httpx.get(d.url + "/v1/models/smollm2", headers=bearer(secret), timeout=10),
        404,
        "model_not_found",
    )


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
    audit = httpx.get(d.url + "/api/v1/audit", headers=bearer(admin), timeout=10).json()["data"]
    actions = [(e["action"], e["actor"], e["client"]) for e in audit if e["target"] == name]
    assert actions == [
        ("key.added", "key:root", "127.0.0.1"),
        ("key.rotated", "key:root", "127.0.0.1"),
        ("key.revoked", "key:root", "127.0.0.1"),
    ]


def test_expired_key(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    secret = new_key(d, admin, expires=yesterday)
    err = error_of(complete(d, secret, 1), 401, "invalid_api_key")
    assert "expired" in err["message"]


def test_repeated_failures_are_slowed(keyed: tuple[Daemon, str]) -> None:
    d, _ = keyed
    for _ in range(4):
        httpx.get(
            d.url + "/v1/models", headers=bearer("sk-llmd-000000000000_" + "x" * 40), timeout=10
        )
    assert "failed authentication #4 from 127.0.0.1: delay" in d.logs()


# -- limits --------------------------------------------------------------------------------


def test_rpm_limit_exact_with_headers(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    secret = new_key(d, admin, rpm=3, tpm=100_000)
    seen = []
    for _ in range(3):
        resp = complete(d, secret, 1)
        assert resp.status_code == 200
        seen.append(resp.headers)
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    for h in seen:
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-limit-tokens"] == "100000"
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert h["x-ratelimit-reset-tokens"].endswith("s")
    refused = complete(d, secret, 1)
    err = error_of(refused, 429, "rate_limit_exceeded")
    assert "RPM" in err["message"]
    # Streams carry the headers too (sent with the first bytes).
    streamed = new_key(d, admin, rpm=5)
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 2, "stream": True}
    with httpx.stream(
        "POST", d.url + "/v1/completions", json=body, headers=bearer(streamed), timeout=60
    ) as resp:
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        assert resp.headers["x-ratelimit-remaining-requests"] == "4"
        resp.read()
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_limit_exact(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    probe = complete(d, admin, 4, ignore_eos=True).json()["usage"]
    per_request = probe["prompt_tokens"] + probe["completion_tokens"]
    # Under the limit after 2 requests, at or over it after 3: exactly 3 are served.
    secret = new_key(d, admin, tpm=3 * per_request)
    remaining = []
    for _ in range(3):
        resp = complete(d, secret, 4, ignore_eos=True)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["total_tokens"] == per_request
        remaining.append(int(resp.headers["x-ratelimit-remaining-tokens"]))
    assert remaining == [2 * per_request, per_request, 0]
    err = error_of(complete(d, secret, 4, ignore_eos=True), 429, "rate_limit_exceeded")
    assert "TPM" in err["message"]


def test_concurrency_limit(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    secret = new_key(d, admin, concurrency=1)
    body = {
        "model": "smollm2",
        "prompt": PROMPT,
        "max_tokens": 60,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", d.url + "/v1/completions", json=body, headers=bearer(secret), timeout=120
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # it is running
        refused = complete(d, secret, 1)
        error_of(refused, 429, "rate_limit_exceeded")
        assert "Retry-After" in refused.headers
        assert [line for line in lines if line][-1] == "data: [DONE]"
    assert complete(d, secret, 1).status_code == 200


def test_monthly_quota_exhausted_mid_stream(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    secret = new_key(d, admin, monthly_tokens=20)
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)
    stream = client.completions.create(
        model="smollm2",
        prompt=PROMPT,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    # The stream that crossed the quota finished whole...
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    # ...and the next request is refused until the month ends.
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=1)
    assert info.value.code == "insufficient_quota"
    now = dt.datetime.now(dt.UTC)
    next_month = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
    retry_after = int(info.value.response.headers["Retry-After"])
    assert abs(retry_after - (next_month - now).total_seconds()) < 120
    shown = httpx.get(
        d.url + "/api/v1/keys/" + _name_of(d, admin, secret), headers=bearer(admin), timeout=10
    ).json()
    assert shown["month_tokens"] == chunks[-1].usage.total_tokens


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


def test_beyond_loopback_requires_a_key(tmp_path: Path) -> None:
    config = f'[server]\nhost = "0.0.0.0"\n[models.smollm2]\npath = "{SMOL}"\n'
    (tmp_path / "a").mkdir()
    d = start_daemon(tmp_path / "a", config, wait_ready=False)
    try:
        error_of(httpx.get(d.url + "/v1/models", timeout=10), 401, "missing_api_key")
        assert httpx.get(d.url + "/health", timeout=10).status_code == 200
        assert "every request is refused with 401" in d.logs()
    finally:
        assert d.stop() == 0
    (tmp_path / "b").mkdir()
    d = start_daemon(
        tmp_path / "b", config + "[auth]\nallow_unauthenticated_remote = true\n", wait_ready=False
    )
    try:
        assert httpx.get(d.url + "/v1/models", timeout=10).status_code == 200
        assert "WITHOUT authentication" in d.logs()
    finally:
        assert d.stop() == 0
    # On loopback with no key, require_auth still closes the door.
    (tmp_path / "c").mkdir()
    loopback = config.replace('"0.0.0.0"', '"127.0.0.1"') + "[auth]\nrequire_auth = true\n"
    d = start_daemon(tmp_path / "c", loopback, wait_ready=False)
    try:
        error_of(httpx.get(d.url + "/v1/models", timeout=10), 401, "missing_api_key")
        assert httpx.get(d.url + "/ready", timeout=10).status_code in (200, 503)
    finally:
        assert d.stop() == 0


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


def test_no_keys_on_loopback_needs_no_key(daemon: Daemon) -> None:
    """The shared daemon has no keys and listens on loopback: no key needed, no limit headers."""
    resp = httpx.post(
        daemon.url + "/v1/completions",
        json={"model": "smol", "prompt": "Hi", "max_tokens": 2},
        timeout=60,
    )
    assert resp.status_code == 200
    assert not any(h.startswith("x-ratelimit") for h in resp.headers)
    assert os.path.exists(daemon.log.parent / "usage.db")
