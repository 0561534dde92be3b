"""The console's pages in a real browser (tests/browser.py: Debian's chromium under
Playwright) through the real daemon with the real models, its API open (no keys, loopback):
the overview shows both models and the memory bar; a model unloaded and loaded again on the
models page changes state there; the playground streams an answer with its numbers; the
switch to Chinese shows Chinese labels and is kept; a key created on the keys page works
with the `openai` client, its use appears on the usage page, and once revoked the client is
refused. On every page: no request to another host, no console error, no CSP violation.

Creating the first key makes a key required, the console included: from then on the test
signs in with an admin key made on the keys page (`/ui/session`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import chromium
from tests.e2e.conftest import BASE_CONFIG, Daemon, start_daemon
from tests.e2e.console_watch import Watched


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The console's own daemon: the keys test makes keys required, which no other module's
    daemon may see."""
    d = start_daemon(tmp_path_factory.mktemp("console"), BASE_CONFIG)
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def watched(browser: Browser, daemon: Daemon) -> Iterator[Watched]:
    w = Watched(browser, daemon)
    yield w
    w.check()
    w.page.context.close()


def test_the_overview_shows_both_models_and_the_memory_bar(watched: Watched) -> None:
    page = watched.open("overview")
    rows = page.locator("#ov-models tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="smollm2")).to_contain_text("ready")
    expect(rows.filter(has_text="gemma3-270m")).to_contain_text("ready")
    fill = page.locator("#ov-memory .bar-fill")
    expect(fill).to_have_attribute("style", re.compile(r"width: [1-9][0-9.]*%"))
    expect(page.locator("#ov-memory .bar-label")).to_contain_text("budget")
    expect(page.locator("#ov-charts svg")).to_have_count(2)
    expect(page.locator("#ov-version")).not_to_be_empty()
    # Not run under systemd: its watchdog is off; the model processes' hang limit is shown.
    expect(page.locator("#ov-watchdog .badge")).to_have_text("off")
    expect(page.locator("#ov-watchdog-models")).to_have_text(
        re.compile(r"model hang limit: \d+\s+s")
    )


def test_a_model_unloaded_and_loaded_changes_state_on_the_models_page(watched: Watched) -> None:
    page = watched.open("models")
    row = page.locator("#models-table tr[data-model='gemma3-270m']")
    expect(row).to_contain_text("ready")
    row.locator("button[data-action=unload]").click()
    expect(row).to_contain_text("unloaded")
    expect(row.locator("button[data-action=load]")).to_be_visible()
    row.locator("button[data-action=load]").click()
    expect(row).to_contain_text("ready")
    expect(row.locator("button[data-action=unload]")).to_be_visible()
    expect(page.locator("#models-plan")).to_contain_text("fit")


def test_the_playground_streams_an_answer_with_its_numbers(watched: Watched) -> None:
    page = watched.open("playground")
    expect(page.locator("#pg-model option")).not_to_have_count(0)
    page.select_option("#pg-model", "smollm2")
    page.fill("#pg-temperature", "0")
    page.fill("#pg-max", "24")
    streamed: list[str] = []
    page.on(
        "response",
        lambda r: (
            streamed.append(r.headers.get("content-type", ""))
            if r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    page.fill("#pg-input", "Name three colours.")
    page.click("#pg-send")
    stats = page.locator("#pg-last-stats")
    expect(stats).to_contain_text("ms to first token")
    expect(stats).to_contain_text("tokens/s")
    text = stats.inner_text()
    out = int(re.search(r"(\d+) output tokens", text).group(1))  # type: ignore[union-attr]
    assert 0 < out <= 24, text
    assert re.search(r"\d+ prompt tokens \(\d+ cached\)", text), text
    assert page.locator(".msg-assistant .msg-text").last.inner_text().strip()
    assert streamed and streamed[0].startswith("text/event-stream")
    # A second question on the same conversation: the prompt's start is the cached prefix.
    page.fill("#pg-input", "And three more.")
    page.click("#pg-send")
    expect(page.locator(".msg-stats")).to_have_count(2)
    expect(stats).to_contain_text("ms to first token")  # the second answer's, once it ended
    second = stats.inner_text()
    cached = int(re.search(r"\((\d+) cached\)", second).group(1))  # type: ignore[union-attr]
    assert cached > 0, second


def test_the_switch_to_chinese_shows_chinese_labels_and_is_kept(watched: Watched) -> None:
    page = watched.open("overview")
    expect(page.locator("#nav a[data-page=overview]")).to_have_text("Overview")
    page.click("#lang")
    expect(page.locator("#nav a[data-page=overview]")).to_have_text("概览")
    expect(page.locator("#nav a[data-page=models]")).to_have_text("模型")
    expect(page.locator("#ov-memory .bar-label")).to_contain_text("预算")
    expect(page.locator("#ov-models")).to_contain_text("就绪")
    expect(page.locator("#ov-watchdog .badge")).to_have_text("未启用")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.reload()
    expect(page.locator("#nav a[data-page=keys]")).to_have_text("密钥")
    page.click("#lang")
    expect(page.locator("#nav a[data-page=keys]")).to_have_text("Keys")


def test_a_chinese_browser_gets_chinese(browser: Browser, daemon: Daemon) -> None:
    w = Watched(browser, daemon, locale="zh-CN")
    page = w.open("models")
    expect(page.locator("#nav a[data-page=usage]")).to_have_text("用量与审计")
    expect(page.locator("#models-table")).to_contain_text("就绪")
    w.check()
    page.context.close()


def test_the_usage_page_shows_totals_by_day_key_and_model(watched: Watched) -> None:
    client = openai.OpenAI(base_url=watched.daemon.url + "/v1", api_key="none")
    client.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    page = watched.open("usage")
    expect(page.locator("#usage-by-model")).to_contain_text("gemma3-270m")
    expect(page.locator("#usage-by-day tbody tr")).not_to_have_count(0)
    expect(page.locator("#usage-groups svg")).not_to_have_count(0)
    csv = page.request.get(
        watched.daemon.url + (page.locator("#csv-model").get_attribute("href") or "")
    )
    assert csv.ok and "gemma3-270m" in csv.text()
    # The daemon logged its loads of the models at start.
    expect(page.locator("#audit-table")).to_contain_text("model.load")


def create_key(page: Page, name: str, admin: bool = False) -> str:
    """Create a key on the keys page; its secret, shown once."""
    page.fill("#key-name", name)
    if admin:
        page.check("#key-admin")
    page.click("#key-submit")
    secret = page.locator("#key-secret").input_value()
    assert secret.startswith("sk-llmd-"), secret
    expect(page.locator(f"#keys-table tr[data-key='{name}']")).to_contain_text("active")
    return secret


def test_a_key_made_on_the_keys_page_is_used_shown_and_revoked(watched: Watched) -> None:
    """Last in the module: the first key makes a key required, here as everywhere."""
    page = watched.open("keys")
    expect(page.locator("#keys-first")).to_be_visible()
    expect(page.locator("#who")).to_have_text("Open: no keys, loopback")
    ops = create_key(page, "ops", admin=True)
    expect(page.locator("#who")).to_contain_text("sign in with an admin key")
    # The secret stays on the page until Done; then the console needs a key, as the API does.
    watched.expect_failed_load(401, "/api/v1/")
    page.click("#key-done")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#signin-key", ops)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#who")).to_contain_text("ops")
    watched.open("keys")
    alice = create_key(page, "alice")
    page.click("#key-done")
    client = openai.OpenAI(base_url=watched.daemon.url + "/v1", api_key=alice, max_retries=0)
    out = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert out.usage is not None and out.usage.total_tokens > 0
    watched.open("usage")
    expect(page.locator("#usage-by-key tbody tr", has_text="alice")).to_contain_text(
        f"{out.usage.total_tokens}"
    )
    watched.open("keys")
    row = page.locator("#keys-table tr[data-key='alice']")
    row.locator("button[data-revoke]").click()
    row.locator("button[data-confirm]").click()
    expect(row).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )


def test_no_inline_script_or_style_in_the_files() -> None:
    """The CSP forbids them: a `style=` attribute or an inline handler would be refused."""
    static = Path(__file__).parents[2] / "llmd" / "console" / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\bstyle=|<style|\bon[a-z]+=", html)
    for js in static.glob("*.js"):
        text = js.read_text(encoding="utf-8")
        assert ".innerHTML" not in text and "eval(" not in text, js.name
        assert len(text.splitlines()) < 500, js.name
