"""Screenshots of the console's pages for docs/console.md: docs/img/console-*.png.

Starts the daemon on the e2e suite's config (smollm2 and gemma3-270m, no keys: the console is
open) as systemd would with `WatchdogSec=30` (a stand-in notification socket: the overview
shows the watchdog on), sends it a little traffic so the charts and tables have something to
show, and photographs each page at 1280 px in English, and the overview in Chinese. The keys
page comes last: the key it creates makes a key required from then on, so a fresh browser then
meets the sign-in form, photographed last. The new key's secret is masked in the picture: it is a
throwaway daemon's, but a secret in a document invites a copy.

Usage: PYTHONPATH=. .venv/bin/python scripts/console_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import openai
from playwright.sync_api import Page, expect

from bench.daemon import MODELS, start_daemon
from tests.browser import chromium, open_page
from tests.e2e.conftest import BASE_CONFIG, ROOT
from tests.notify_socket import NotifySocket

QUESTIONS = [
    "Name three colours.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Say hello in Chinese.",
]


def traffic(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    for i in range(12):
        model = "smollm2" if i % 3 else "gemma3-270m"
        question = QUESTIONS[i % len(QUESTIONS)]
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=48
        )


def shoot(page: Page, url: str, name: str, out: Path, ready: str) -> None:
    page.goto(f"{url}/ui/#{name}")
    expect(page.locator(ready)).to_be_visible(timeout=60_000)
    page.wait_for_timeout(500)  # the charts' last redraw
    page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmd-shots-"))
    notify = NotifySocket(work / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "30000000"}
    d = start_daemon(work, f'models_dir = "{MODELS}"\n' + BASE_CONFIG, env=env)
    try:
        traffic(d.url)
        with chromium() as browser:
            page, _ = open_page(browser)
            shoot(page, d.url, "overview", out, "#ov-charts")
            shoot(page, d.url, "models", out, "#models-table")
            shoot(page, d.url, "usage", out, "#usage-by-model")
            page.goto(f"{d.url}/ui/#playground")
            expect(page.locator("#pg-model option")).not_to_have_count(0)
            page.fill("#pg-system", "You are a concise assistant.")
            page.fill("#pg-input", "Give me three tips for a tidy desk.")
            page.click("#pg-send")
            expect(page.locator("#pg-last-stats")).to_be_visible(timeout=60_000)
            page.screenshot(path=str(out / "console-playground.png"), full_page=True)
            zh, _ = open_page(browser, locale="zh-CN")
            zh.goto(f"{d.url}/ui/#overview")
            expect(zh.locator("#ov-charts")).to_be_visible(timeout=60_000)
            zh.wait_for_timeout(500)
            zh.screenshot(path=str(out / "console-overview-zh.png"), full_page=True)
            page.goto(f"{d.url}/ui/#keys")
            page.fill("#key-name", "reception")
            page.fill("#key-description", "The front desk's PC")
            page.fill("#key-rpm", "60")
            page.fill("#key-monthly_tokens", "2000000")
            page.click("#key-submit")
            secret = page.locator("#key-secret")
            expect(secret).to_be_visible()
            page.screenshot(
                path=str(out / "console-keys.png"),
                full_page=True,
                mask=[secret],
                mask_color="#c9d3dd",
            )
            signin, _ = open_page(browser)
            signin.goto(f"{d.url}/ui/#overview")
            expect(signin.locator("#signin")).to_be_visible(timeout=60_000)
            signin.fill("#signin-key", "not a real key")  # shown as dots
            signin.screenshot(path=str(out / "console-signin.png"), full_page=True)
    finally:
        d.stop()
        notify.close()
    print("\n".join(str(p) for p in sorted(out.glob("console-*.png"))))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img")
