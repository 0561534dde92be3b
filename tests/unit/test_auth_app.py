"""Keys, rights and limits through the app in-process (tests/unit/app_harness.py): who gets
401, 403 and 429, with which OpenAI error, which paths are open, and what a key's limits and
weight do to its requests. Keys are written with llmd.auth.keys before the app starts, as
`llmd keys add` would."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from llmd.auth.keys import add_key, revoke_key
from llmd.auth.middleware import AUTH
from tests.unit.app_harness import (
    GEMMA,
    HI,
    SMOL,
    Harness,
    chunks_of,
    error_of,
    json_of,
    keys_file,
    serve,
    sse_of,
    until,
)
from tests.unit.fake_process import FakeProcesses

PROMPT = "The capital of France is"  # five tokens to the fake engine


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key(tmp_path: Path, name: str, **fields: Any) -> str:
    """A new key in the keys file the harness's daemon reads; its secret."""
    return add_key(keys_file(tmp_path), name, **fields)[1]


async def complete(h: Harness, secret: str, max_tokens: int = 4, **extra: Any) -> Any:
    body = {"model": SMOL, "prompt": PROMPT, "max_tokens": max_tokens, **extra}
    return await h.post("/v1/completions", body, headers=bearer(secret))


# -- authentication and rights -----------------------------------------------------------------


def test_missing_wrong_and_malformed_keys_are_401(tmp_path: Path) -> None:
    admin = key(tmp_path, "root", admin=True)

    async def test(h: Harness) -> None:
        error = await error_of(
            await h.get("/v1/models"), 401, code="missing_api_key", type_="invalid_request_error"
        )
        assert error["message"] == (
            "You didn't provide an API key. Provide it in an Authorization header "
            "(Authorization: Bearer YOUR_KEY) or an x-api-key header."
        )
        assert error["param"] is None
        wrong = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
        for secret in (wrong, "sk-not-ours"):
            error = await error_of(
                await h.get("/v1/models", bearer(secret)), 401, code="invalid_api_key"
            )
            assert error["message"] == "Incorrect API key provided."
        await error_of(
            await h.get("/v1/models", {"Authorization": "Basic x"}), 401, code="missing_api_key"
        )
        chat = {"model": SMOL, "messages": HI}
        await error_of(await h.post("/v1/chat/completions", chat), 401, code="missing_api_key")
        assert h.submitted() == []
        # Both header styles work.
        assert (await h.get("/v1/models", bearer(admin))).status == 200
        assert (await h.get("/v1/models", {"x-api-key": admin})).status == 200
        record = await h.record_of("/v1/models")
        assert record.key_name == "root"

    serve(tmp_path, test)


def test_expired_and_revoked_keys_are_401_saying_so(tmp_path: Path) -> None:
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    old = key(tmp_path, "old", expires=yesterday)
    gone = key(tmp_path, "gone")

    async def test(h: Harness) -> None:
        error = await error_of(await complete(h, old), 401, code="invalid_api_key")
        assert error["message"] == "The API key 'old' has expired."
        assert (await complete(h, gone)).status == 200
        revoke_key(keys_file(tmp_path), "gone")
        await h.client.app[AUTH].registry.reload()
        error = await error_of(await complete(h, gone), 401, code="invalid_api_key")
        assert error["message"] == "The API key 'gone' has been revoked."

    serve(tmp_path, test)


def test_health_and_ready_are_open_and_admin_paths_need_an_admin_key(tmp_path: Path) -> None:
    admin = key(tmp_path, "root", admin=True)
    user = key(tmp_path, "user")

    async def test(h: Harness) -> None:
        assert await json_of(await h.get("/health")) == {"status": "ok"}
        assert (await json_of(await h.get("/ready")))["status"] == "ready"
        await error_of(await h.get("/api/v1/health"), 401, code="missing_api_key")
        # /api/v1/health needs a key, any key; every other /api/v1/* path an admin key.
        assert (await h.get("/api/v1/health", bearer(user))).status == 200
        for path in ("/api/v1/keys", "/api/v1/usage", "/api/v1/audit", "/api/v1/models"):
            error = await error_of(
                await h.get(path, bearer(user)),
                403,
                code="admin_key_required",
                type_="permission_error",
            )
            assert error["message"] == f"The API key 'user' is not an admin key: {path} needs one."
        await error_of(
            await h.post("/api/v1/keys", {"name": "x"}, headers=bearer(user)),
            403,
            code="admin_key_required",
        )
        await error_of(
            await h.post(f"/api/v1/models/{SMOL}/unload", headers=bearer(user)),
            403,
            code="admin_key_required",
        )
        assert h.manager.entries[SMOL].current is not None  # still loaded
        listed = await json_of(await h.get("/api/v1/keys", bearer(admin)))
        assert sorted(k["name"] for k in listed["data"]) == ["root", "user"]

    serve(tmp_path, test)


def test_metrics_need_an_admin_or_metrics_key_once_keys_exist(tmp_path: Path) -> None:
    """/metrics names every key and its usage: with keys in force, a local process without a
    key gets 401 and an inference key 403; an admin key or a --metrics key reads it."""
    admin = key(tmp_path, "root", admin=True)
    user = key(tmp_path, "alice")
    scraper = key(tmp_path, "prometheus", metrics=True)

    async def test(h: Harness) -> None:
        assert (await complete(h, user)).status == 200
        await error_of(await h.get("/metrics"), 401, code="missing_api_key")
        error = await error_of(
            await h.get("/metrics", bearer(user)), 403, code="metrics_key_required"
        )
        assert "needs an admin key or a key with the metrics right" in error["message"]
        for secret in (admin, scraper):
            resp = await h.get("/metrics", bearer(secret))
            assert resp.status == 200
            assert 'key="alice"' in await resp.text()

    serve(tmp_path, test)


def test_metrics_without_keys_stay_open_on_loopback(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        resp = await h.get("/metrics")
        assert resp.status == 200 and "llmd_requests_total" in await resp.text()

    serve(tmp_path, test)


def test_a_key_limited_to_some_models(tmp_path: Path) -> None:
    secret = key(tmp_path, "gemma-only", models=[GEMMA])
    by_alias = key(tmp_path, "smol-only", models=["smol"])

    async def test(h: Harness) -> None:
        listed = await json_of(await h.get("/v1/models", bearer(secret)))
        assert [m["id"] for m in listed["data"]] == [GEMMA]
        out = await json_of(
            await h.post(
                "/v1/completions",
                {"model": GEMMA, "prompt": PROMPT, "max_tokens": 3},
                headers=bearer(secret),
            )
        )
        assert out["usage"]["completion_tokens"] == 3
        error = await error_of(
            await h.post(
                "/v1/chat/completions", {"model": "smol", "messages": HI}, headers=bearer(secret)
            ),
            403,
            code="model_not_allowed",
            param="model",
            type_="permission_error",
        )
        assert error["message"] == f"The API key 'gemma-only' may not use the model '{SMOL}'."
        # The default model is smollm2: naming no model does not get around the rule.
        await error_of(
            await h.post(
                "/v1/completions", {"prompt": "x", "max_tokens": 1}, headers=bearer(secret)
            ),
            403,
            code="model_not_allowed",
        )
        await error_of(
            await h.post("/v1/embeddings", {"model": SMOL, "input": "x"}, headers=bearer(secret)),
            403,
            code="model_not_allowed",
        )
        await error_of(
            await h.get(f"/v1/models/{SMOL}", bearer(secret)), 404, code="model_not_found"
        )
        assert h.submitted(SMOL) == []
        # A key that names an alias may use the model under every name.
        listed = await json_of(await h.get("/v1/models", bearer(by_alias)))
        assert sorted(m["id"] for m in listed["data"]) == sorted([SMOL, "smol"])
        assert (await complete(h, by_alias)).status == 200

    serve(tmp_path, test)


def test_the_keys_name_and_weight_reach_the_engine(tmp_path: Path) -> None:
    secret = key(tmp_path, "heavy", weight=3)

    async def test(h: Harness) -> None:
        await json_of(await complete(h, secret))
        (req,) = h.submitted()
        assert (req.tenant, req.weight) == ("heavy", 3)
        record = await h.record_of("/v1/completions")
        assert (record.key_name, record.weight) == ("heavy", 3)

    serve(tmp_path, test)


# -- limits -------------------------------------------------------------------------------------


def test_rpm_limit_exact_with_headers(tmp_path: Path) -> None:
    secret = key(tmp_path, "rpm3", rpm=3, tpm=100_000)
    streamed = key(tmp_path, "rpm5", rpm=5)

    async def test(h: Harness) -> None:
        seen = []
        for _ in range(3):
            resp = await complete(h, secret, 1)
            assert resp.status == 200
            seen.append(resp.headers)
        assert [s["x-ratelimit-remaining-requests"] for s in seen] == ["2", "1", "0"]
        for headers in seen:
            assert headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-limit-tokens"] == "100000"
            assert headers["x-ratelimit-reset-requests"].endswith("s")
            assert headers["x-ratelimit-reset-tokens"].endswith("s")
        refused = await complete(h, secret, 1)
        error = await error_of(refused, 429, code="rate_limit_exceeded", type_="requests")
        assert "RPM" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # Streams carry the headers too (sent with the first bytes).
        resp = await complete(h, streamed, 2, stream=True)
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        assert resp.headers["x-ratelimit-remaining-requests"] == "4"
        assert (await sse_of(resp))[-1] == "[DONE]"

    serve(tmp_path, test)


def test_tpm_limit_exact(tmp_path: Path) -> None:
    per_request = 5 + 4  # the prompt's five words, four tokens out
    secret = key(tmp_path, "tpm", tpm=3 * per_request)

    async def test(h: Harness) -> None:
        remaining = []
        for _ in range(3):
            out = await complete(h, secret, 4)
            assert (await json_of(out))["usage"]["total_tokens"] == per_request
            remaining.append(int(out.headers["x-ratelimit-remaining-tokens"]))
        assert remaining == [2 * per_request, per_request, 0]
        error = await error_of(await complete(h, secret, 4), 429, code="rate_limit_exceeded")
        assert "TPM" in error["message"]

    serve(tmp_path, test)


def test_concurrency_limit(tmp_path: Path) -> None:
    secret = key(tmp_path, "one-at-a-time", concurrency=1)

    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()
        running = await complete(h, secret, 4, stream=True)
        assert running.status == 200
        refused = await complete(h, secret, 1)
        error = await error_of(refused, 429, code="rate_limit_exceeded")
        assert error["message"] == (
            "Rate limit reached for key 'one-at-a-time': 1 concurrent requests. "
            "Wait for one to finish."
        )
        assert refused.headers["Retry-After"] == "1"
        process.gate.set()
        assert (await sse_of(running))[-1] == "[DONE]"
        await until(lambda: len(h.records) == 2, "the stream's end counted")
        assert (await complete(h, secret, 1)).status == 200

    serve(tmp_path, test)


def test_monthly_quota_exhausted_mid_stream(tmp_path: Path) -> None:
    admin = key(tmp_path, "root", admin=True)
    secret = key(tmp_path, "monthly", monthly_tokens=20)
    processes = FakeProcesses(tokens=[f" w{i}" for i in range(50)])

    async def test(h: Harness) -> None:
        body = {"stream": True, "stream_options": {"include_usage": True}}
        chunks = chunks_of(await sse_of(await complete(h, secret, 40, **body)))
        # The stream that crossed the quota finished whole...
        assert chunks[-1]["usage"]["completion_tokens"] == 40
        assert any(c["choices"] and c["choices"][0]["finish_reason"] == "length" for c in chunks)
        await until(lambda: len(h.records) == 1, "the stream's tokens charged")
        # ...and the next request is refused until the month ends.
        refused = await complete(h, secret, 1)
        error = await error_of(refused, 429, code="insufficient_quota", type_="insufficient_quota")
        assert error["message"] == (
            "You exceeded your monthly quota of 20 tokens for key 'monthly' (45 used). It "
            "renews at the start of next month (UTC)."
        )
        now = dt.datetime.now(dt.UTC)
        next_month = dt.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=dt.UTC)
        retry_after = int(refused.headers["Retry-After"])
        assert abs(retry_after - (next_month - now).total_seconds()) < 120
        shown = await json_of(await h.get("/api/v1/keys/monthly", bearer(admin)))
        assert shown["month_tokens"] == chunks[-1]["usage"]["total_tokens"] == 45

    serve(tmp_path, test, processes=processes)


# -- when a key is needed -----------------------------------------------------------------------


def test_beyond_loopback_a_key_is_needed_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmd.auth")

    async def refused(h: Harness) -> None:
        await error_of(await h.get("/v1/models"), 401, code="missing_api_key")
        assert (await h.get("/health")).status == 200
        assert (await h.get("/ready")).status == 200

    async def served(h: Harness) -> None:
        assert (await h.get("/v1/models")).status == 200

    serve(tmp_path / "a", refused, config={"server.host": "0.0.0.0"})
    assert "every request is refused with 401" in caplog.text
    serve(
        tmp_path / "b",
        served,
        config={"server.host": "0.0.0.0", "auth.allow_unauthenticated_remote": True},
    )
    assert "WITHOUT authentication" in caplog.text
    # On loopback with no key, require_auth still closes the door.
    serve(tmp_path / "c", refused, config={"auth.require_auth": True})


def test_no_keys_on_loopback_needs_no_key_and_sends_no_limit_headers(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        resp = await h.post("/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": 2})
        await json_of(resp)
        assert not any(name.lower().startswith("x-ratelimit") for name in resp.headers)
        assert (await h.record_of("/v1/completions")).key_name is None

    serve(tmp_path, test, config={"usage.enabled": True})
    assert (tmp_path / "usage.db").exists()
