"""Debian's chromium driven by Playwright, for the tests of pages people look at.

`playwright install` downloads a browser, which these machines cannot do; the `playwright`
package drives the system's `/usr/bin/chromium` instead (scripts/setup installs it). Every
page's requests are recorded, so a test can check that nothing left for another host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, Request, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@dataclass
class Recorder:
    """Every URL a page asked for, in order."""

    urls: list[str] = field(default_factory=list)

    def __call__(self, request: Request) -> None:
        self.urls.append(request.url)

    def foreign(self, origin: str) -> list[str]:
        """URLs of another host than `origin`'s (data: and blob: URLs stay in the page)."""
        host = urlsplit(origin).netloc
        return [
            u
            for u in self.urls
            if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != host
        ]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless chromium for the duration of the block."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(
    browser: Browser, locale: str = "en-US", width: int = 1280, height: int = 860
) -> tuple[Page, Recorder]:
    """A page in a fresh context (its own cookies) with its requests recorded."""
    context = browser.new_context(locale=locale, viewport={"width": width, "height": height})
    page = context.new_page()
    recorder = Recorder()
    page.on("request", recorder)
    return page, recorder
