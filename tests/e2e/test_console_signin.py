"""Signing in to the console in a real browser (tests/browser.py) through the real daemon with
keys: a wrong key and a non-admin key are told apart on the form and leave it shown (in
Chinese too), an admin key signs in (the header names it, the overview shows the model),
and signing out returns to the form, after which the old cookie, read from the browser, is
refused by the API. No request leaves for another host; the only console errors are the
refused loads the test causes. The cookie's flags and the CSRF token are tested over HTTP in
tests/e2e/test_console_auth.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, expect

from llmd.auth.keys import add_key
from tests.browser import chromium
from tests.e2e.conftest import ONE_SMALL_MODEL, Daemon, start_daemon
from tests.e2e.console_watch import Watched

CONFIG = (
    ONE_SMALL_MODEL
    + """
[auth]
failure_delay_s = 0.01
failure_delay_max_s = 0.05
"""
)
WRONG = "sk-llmd-" + "0" * 40
"""A key of the right shape that the daemon does not know."""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, str]]:
    """A daemon with an admin key `root` and a plain key `clerk`: (daemon, root's, clerk's)."""
    tmp = tmp_path_factory.mktemp("console-signin")
    _, root = add_key(tmp / "keys.toml", "root", admin=True)
    _, clerk = add_key(tmp / "keys.toml", "clerk")
    d = start_daemon(tmp, CONFIG)
    yield d, root, clerk
    assert d.stop() == 0, d.logs()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def sign_in_form(browser: Browser, daemon: Daemon, locale: str = "en-US") -> Watched:
    """A fresh browser (no cookie) on the console: the sign-in form, nothing else."""
    w = Watched(browser, daemon, locale=locale)
    w.page.goto(f"{daemon.url}/ui/#overview")
    expect(w.page.locator("#signin")).to_be_visible()
    expect(w.page.locator("#page")).to_be_hidden()
    return w


def submit(w: Watched, secret: str) -> None:
    w.page.fill("#signin-key", secret)
    w.page.click("#signin-form button[type=submit]")


def test_wrong_and_non_admin_keys_are_refused_on_the_form(
    browser: Browser, keyed: tuple[Daemon, str, str]
) -> None:
    daemon, _, clerk = keyed
    w = sign_in_form(browser, daemon)
    w.expect_failed_load(401, "/ui/session")
    w.expect_failed_load(403, "/ui/session")
    page, error = w.page, w.page.locator("#signin-error")
    submit(w, WRONG)
    expect(error).to_have_text("That key is not valid.")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#page")).to_be_hidden()
    submit(w, clerk)
    expect(error).to_have_text("That key is not an admin key.")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#who")).to_be_empty()
    assert [c for c in page.context.cookies() if c["name"] == "llmd_session"] == []
    w.check()
    page.context.close()


def test_a_wrong_key_is_told_in_chinese(browser: Browser, keyed: tuple[Daemon, str, str]) -> None:
    daemon, _, _ = keyed
    w = sign_in_form(browser, daemon, locale="zh-CN")
    w.expect_failed_load(401, "/ui/session")
    expect(w.page.locator("#signin h2")).to_have_text("登录")
    submit(w, WRONG)
    expect(w.page.locator("#signin-error")).to_have_text("密钥无效。")
    expect(w.page.locator("#signin")).to_be_visible()
    w.check()
    w.page.context.close()


def test_an_admin_key_signs_in_and_signing_out_ends_the_cookie(
    browser: Browser, keyed: tuple[Daemon, str, str]
) -> None:
    daemon, root, _ = keyed
    w = sign_in_form(browser, daemon)
    page = w.page
    submit(w, root)
    expect(page.locator("#who")).to_have_text("Signed in as root")
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#page[data-page=overview]")).to_be_visible()
    expect(page.locator("#ov-models tbody tr", has_text="smollm2")).to_contain_text("ready")
    expect(page.locator("#signout")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "llmd_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    jar = {"Cookie": f"llmd_session={cookie['value']}"}
    # The cookie is the admin key to the API while the session lasts...
    resp = httpx.get(daemon.url + "/api/v1/keys", headers=jar, timeout=30)
    assert resp.status_code == 200, resp.text
    # A poll of the overview may be in flight when the session ends: answered 401, as it should.
    w.expect_failed_load(401, "/api/v1/")
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#page")).to_be_hidden()
    expect(page.locator("#who")).to_be_empty()
    expect(page.locator("#signout")).to_be_hidden()
    # ...and nothing once signed out: the old cookie is refused, by the API and the session.
    resp = httpx.get(daemon.url + "/api/v1/health", headers=jar, timeout=30)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"]
    state = httpx.get(daemon.url + "/ui/session", headers=jar, timeout=30).json()
    assert state["signed_in"] is False and state["auth"] == "required"
    # A reload stays signed out.
    page.reload()
    expect(page.locator("#signin")).to_be_visible()
    w.check()
    page.context.close()
