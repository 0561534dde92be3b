"""The web console's sign-in through the real daemon, over HTTP as a browser would make it (no
browser: the cookie and headers are what is tested): an admin key exchanged for the session
cookie with every flag (Secure over HTTPS), refused for a wrong or non-admin key and from
another site, the cookie taken by the API as the key (CSRF token needed for state changes),
ended by sign-out and by revoking the key; open auth needs no sign-in; the pages carry their
security headers; `[console] enabled = false` serves none of it.

One daemon with keys (`keyed`) serves most tests; daemons of their own for HTTPS, open auth
and the console turned off.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from llmd.auth.keys import add_key
from llmd.console.pages import SECURITY_HEADERS
from tests.e2e.conftest import ONE_SMALL_MODEL, Daemon, bearer, start_daemon

MODEL = ONE_SMALL_MODEL
KEYED_CONFIG = (
    MODEL
    + """
[auth]
failure_delay_s = 0.01
failure_delay_max_s = 0.05

[console]
session_ttl = "2h"
"""
)
COOKIE = "llmd_session"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, str]]:
    """A daemon with an admin key `root` and a plain key `user`: (daemon, root's, user's)."""
    tmp = tmp_path_factory.mktemp("console-keyed")
    _, root = add_key(tmp / "keys.toml", "root", admin=True)
    _, user = add_key(tmp / "keys.toml", "user")
    d = start_daemon(tmp, KEYED_CONFIG)
    yield d, root, user
    assert d.stop() == 0, d.logs()


def client(d: Daemon) -> httpx.Client:
    """A client that keeps no cookies: each test sends the cookie it means to."""
    return httpx.Client(base_url=d.url, verify=d.ssl_context or True, timeout=60)


def sign_in(c: httpx.Client, secret: str, **headers: str) -> httpx.Response:
    return c.post("/ui/session", json={"key": secret}, headers=headers)


def session_cookie(resp: httpx.Response) -> Any:
    """The llmd_session morsel the response sets (its value and attributes)."""
    cookies: SimpleCookie = SimpleCookie()
    for header in resp.headers.get_list("set-cookie"):
        cookies.load(header)
    assert COOKIE in cookies, resp.headers
    return cookies[COOKIE]


def signed_in(c: httpx.Client, secret: str) -> tuple[dict[str, str], str]:
    """Sign in: (the Cookie header to send, the CSRF token)."""
    resp = sign_in(c, secret)
    assert resp.status_code == 200, resp.text
    return {"Cookie": f"{COOKIE}={session_cookie(resp).value}"}, resp.json()["csrf"]


def error_of(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_signing_in_sets_the_session_cookie_with_every_flag(keyed: tuple[Daemon, str, str]) -> None:
    d, root, _ = keyed
    with client(d) as c:
        before = c.get("/ui/session")
        assert before.status_code == 200
        assert before.json() == {
            "auth": "required",
            "signed_in": False,
            "key": None,
            "admin": False,
            "csrf": None,
            "expires": None,
        }
        resp = sign_in(c, root)
        assert resp.status_code == 200, resp.text
        state = resp.json()
        assert state["auth"] == "required" and state["signed_in"] is True
        assert (state["key"], state["admin"]) == ("root", True)
        assert isinstance(state["csrf"], str) and len(state["csrf"]) >= 43
        assert state["expires"].endswith("+00:00")
        assert resp.headers["cache-control"] == "no-store"

        morsel = session_cookie(resp)
        assert len(morsel.value) >= 43
        assert morsel["httponly"] is True and morsel["samesite"] == "Strict"
        assert morsel["path"] == "/" and morsel["max-age"] == str(2 * 3600)
        assert not morsel["secure"]  # plain HTTP: a Secure cookie would never come back

        # The page asks where it stands: the same session, the same token.
        again = c.get("/ui/session", headers={"Cookie": f"{COOKIE}={morsel.value}"})
        assert again.json() == state

    audit = httpx.get(d.url + "/api/v1/audit", headers=bearer(root), timeout=10).json()["data"]
    assert any(e["action"] == "console.signed_in" and e["actor"] == "key:root" for e in audit)


def test_a_wrong_key_is_401_and_paced_as_the_api_and_a_plain_key_403(
    keyed: tuple[Daemon, str, str],
) -> None:
    d, root, user = keyed
    wrong = root[:-4] + ("AAAA" if not root.endswith("AAAA") else "BBBB")
    with client(d) as c:
        assert c.get("/v1/models", headers=bearer(root)).status_code == 200  # pacing reset
        logged = len(d.logs())
        error_of(sign_in(c, wrong), 401, "invalid_api_key")
        # The API's failure and the sign-in's are counted together, per address.
        error_of(c.get("/v1/models", headers=bearer(wrong)), 401, "invalid_api_key")
        error_of(sign_in(c, wrong), 401, "invalid_api_key")
        error_of(sign_in(c, ""), 401, "missing_api_key")
        # The daemon's log is written by a thread of its own: it may trail the answers.
        expected = [f"failed authentication #{n} from 127.0.0.1" for n in (2, 3, 4)]
        deadline = time.monotonic() + 30
        while not all(line in d.logs()[logged:] for line in expected):
            assert time.monotonic() < deadline, d.logs()[logged:]
            time.sleep(0.1)

        error = error_of(sign_in(c, user), 403, "admin_key_required")
        assert error["type"] == "permission_error" and "'user'" in error["message"]
        for refused in (sign_in(c, wrong), sign_in(c, user)):
            assert "set-cookie" not in refused.headers
        too_long = c.post("/ui/session", json={"key": "sk-llmd-" + "A" * 9000})
        for bad in (c.post("/ui/session", json={"secret": root}), c.post("/ui/session"), too_long):
            assert error_of(bad, 400, None)["type"] == "invalid_request_error"


def test_a_sign_in_from_another_site_is_refused(keyed: tuple[Daemon, str, str]) -> None:
    d, root, _ = keyed
    with client(d) as c:
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{d.port + 1}"):
            resp = sign_in(c, root, Origin=origin)
            error_of(resp, 403, "origin_not_allowed")
            assert "set-cookie" not in resp.headers
        # The console's own page (same host and port) signs in.
        assert sign_in(c, root, Origin=d.url).status_code == 200


def test_the_cookie_is_the_key_on_the_api(keyed: tuple[Daemon, str, str]) -> None:
    d, root, user = keyed
    with client(d) as c:
        cookie, _ = signed_in(c, root)
        models = c.get("/api/v1/models", headers=cookie)
        assert models.status_code == 200, models.text
        assert "smollm2" in [m["name"] for m in models.json()["models"]]
        assert c.get("/v1/models", headers=cookie).status_code == 200
        assert c.get("/api/v1/keys", headers=cookie).status_code == 200
        assert c.get("/metrics", headers=cookie).status_code == 200
        # A key header wins over the cookie: the plain key is not an admin.
        with_user = {**cookie, **bearer(user)}
        error_of(c.get("/api/v1/keys", headers=with_user), 403, "admin_key_required")
        # The cookie is taken on the API's paths only.
        error_of(c.get("/nowhere", headers=cookie), 401, "missing_api_key")
        # A made-up cookie is no session.
        bogus = {"Cookie": f"{COOKIE}=made-up"}
        error_of(c.get("/api/v1/models", headers=bogus), 401, "session_expired")


def test_a_state_change_with_the_cookie_needs_the_csrf_token(
    keyed: tuple[Daemon, str, str],
) -> None:
    d, root, _ = keyed
    with client(d) as c:
        cookie, csrf = signed_in(c, root)
        body = {"name": "made-in-console"}
        for headers in (
            cookie,
            {**cookie, "X-CSRF-Token": csrf[:-1]},
            {**cookie, "X-CSRF-Token": ""},
        ):
            error = error_of(
                c.post("/api/v1/keys", json=body, headers=headers), 403, "csrf_token_invalid"
            )
            assert error["type"] == "permission_error"
        # Another session's token is not this one's.
        _, other = signed_in(c, root)
        headers = {**cookie, "X-CSRF-Token": other}
        error_of(c.post("/api/v1/keys", json=body, headers=headers), 403, "csrf_token_invalid")
        assert c.get("/api/v1/keys/made-in-console", headers=bearer(root)).status_code == 404

        made = c.post("/api/v1/keys", json=body, headers={**cookie, "X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        assert made.json()["secret"].startswith("sk-llmd-")

        # A generation made with the cookie is the key's: its usage is recorded under it.
        completion = {"model": "smollm2", "prompt": "Hello", "max_tokens": 2}
        error_of(
            c.post("/v1/completions", json=completion, headers=cookie), 403, "csrf_token_invalid"
        )
        done = c.post("/v1/completions", json=completion, headers={**cookie, "X-CSRF-Token": csrf})
        assert done.status_code == 200, done.text

        def recorded() -> list[dict[str, Any]]:
            rows = c.get("/api/v1/usage", params={"key": "root"}, headers=bearer(root))
            return [r for r in rows.json()["data"] if r.get("endpoint") == "/v1/completions"]

        deadline = time.monotonic() + 30
        while not recorded():
            assert time.monotonic() < deadline, "the cookie's completion was not recorded"
            time.sleep(0.2)
    audit = httpx.get(d.url + "/api/v1/audit", headers=bearer(root), timeout=10).json()["data"]
    added = [e for e in audit if e["action"] == "key.added" and e["target"] == "made-in-console"]
    assert [e["actor"] for e in added] == ["key:root"]


def test_signing_out_ends_the_session(keyed: tuple[Daemon, str, str]) -> None:
    d, root, _ = keyed
    with client(d) as c:
        cookie, csrf = signed_in(c, root)
        error_of(c.delete("/ui/session", headers=cookie), 403, "csrf_token_invalid")
        assert c.get("/api/v1/models", headers=cookie).status_code == 200  # still signed in

        out = c.delete("/ui/session", headers={**cookie, "X-CSRF-Token": csrf})
        assert out.status_code == 200, out.text
        assert out.json()["signed_in"] is False and out.json()["csrf"] is None
        cleared = session_cookie(out)
        assert cleared.value == "" and cleared["max-age"] == "0"

        # The same cookie replayed after sign-out: 401 everywhere.
        error_of(c.get("/api/v1/models", headers=cookie), 401, "session_expired")
        error_of(
            c.post("/api/v1/keys", json={"name": "late"}, headers={**cookie, "X-CSRF-Token": csrf}),
            401,
            "session_expired",
        )
        error_of(
            c.delete("/ui/session", headers={**cookie, "X-CSRF-Token": csrf}),
            401,
            "session_expired",
        )
        assert c.get("/ui/session", headers=cookie).json()["signed_in"] is False


def test_revoking_the_key_ends_its_sessions(keyed: tuple[Daemon, str, str]) -> None:
    d, root, _ = keyed
    with client(d) as c:
        made = c.post("/api/v1/keys", json={"name": "ops", "admin": True}, headers=bearer(root))
        assert made.status_code == 201, made.text
        cookie, _ = signed_in(c, made.json()["secret"])
        assert c.get("/api/v1/models", headers=cookie).status_code == 200
        revoked = c.post("/api/v1/keys/ops/revoke", headers=bearer(root))
        assert revoked.status_code == 200, revoked.text
        error_of(c.get("/api/v1/models", headers=cookie), 401, "session_expired")
        assert c.get("/ui/session", headers=cookie).json()["signed_in"] is False


def test_the_pages_carry_the_security_headers(keyed: tuple[Daemon, str, str]) -> None:
    d, _, _ = keyed
    with client(d) as c:
        page = c.get("/ui/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-content-type-options"] == "nosniff"
        root = c.get("/")
        assert root.status_code == 302 and root.headers["location"] == "/ui/"
        assert root.headers["x-frame-options"] == "DENY"
        session = c.get("/ui/session")
        for name, value in SECURITY_HEADERS.items():
            assert session.headers[name] == value


def _self_signed(out: Path) -> Path:
    """A certificate for 127.0.0.1 made as an operator makes it; its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "llmd", "tls", "self-signed", "--host", "127.0.0.1"]
    made = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return out / "cert.pem"


def test_over_https_the_cookie_is_secure(tmp_path: Path) -> None:
    cert = _self_signed(tmp_path / "tls")
    _, root = add_key(tmp_path / "keys.toml", "root", admin=True)
    config = MODEL.replace(
        "[server]\n", '[server]\ntls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
    )
    d = start_daemon(tmp_path, config, ca=cert)
    try:
        assert d.url.startswith("https://")
        with client(d) as c:
            resp = sign_in(c, root)
            assert resp.status_code == 200, resp.text
            morsel = session_cookie(resp)
            assert morsel["secure"] is True and morsel["httponly"] is True
            assert morsel["samesite"] == "Strict"
            cookie = {"Cookie": f"{COOKIE}={morsel.value}"}
            assert c.get("/api/v1/models", headers=cookie).status_code == 200
            out = c.delete("/ui/session", headers={**cookie, "X-CSRF-Token": resp.json()["csrf"]})
            assert session_cookie(out)["secure"] is True
    finally:
        assert d.stop() == 0, d.logs()


def test_open_auth_needs_no_sign_in(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, MODEL)  # no keys, loopback: the API needs no key
    try:
        with client(d) as c:
            state = c.get("/ui/session").json()
            assert state == {
                "auth": "open",
                "signed_in": False,
                "key": None,
                "admin": True,
                "csrf": None,
                "expires": None,
            }
            assert c.get("/api/v1/models").status_code == 200
            error_of(sign_in(c, "sk-llmd-anything"), 401, "invalid_api_key")
            # Open to any local client, but not to a page of another site the browser shows:
            # its "simple" cross-site POST (no preflight) would otherwise act.
            chat = {
                "model": "smollm2",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            }
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{d.port + 1}"):
                for path, body in (("/v1/chat/completions", chat), ("/api/v1/keys", {"name": "x"})):
                    resp = c.post(
                        path, json=body, headers={"Origin": origin, "Content-Type": "text/plain"}
                    )
                    error_of(resp, 403, "origin_not_allowed")
            assert (
                c.get("/api/v1/keys", headers={"Origin": "http://evil.example"}).status_code == 200
            )
            own = {"Origin": f"http://127.0.0.1:{d.port}"}
            assert c.post("/v1/chat/completions", json=chat, headers=own).status_code == 200
            assert c.post("/v1/chat/completions", json=chat).status_code == 200  # not a browser
    finally:
        assert d.stop() == 0, d.logs()


def test_a_console_turned_off_is_not_served(tmp_path: Path) -> None:
    _, root = add_key(tmp_path / "keys.toml", "root", admin=True)
    d = start_daemon(tmp_path, MODEL + "\n[console]\nenabled = false\n")
    try:
        with client(d) as c:
            for path in ("/", "/ui/", "/ui/index.html", "/ui/session"):
                assert c.get(path, headers=bearer(root)).status_code == 404, path
            assert c.post("/ui/session", json={"key": root}).status_code != 200
            assert c.get("/api/v1/models", headers=bearer(root)).status_code == 200
    finally:
        assert d.stop() == 0, d.logs()
