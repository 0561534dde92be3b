"""A console page under watch in the browser tests (tests/e2e/test_console_*.py): its requests
recorded (none may go to another host) and what went wrong in it collected (console errors and
warnings, uncaught errors, CSP violations), less the failed loads a test causes on purpose."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser import open_page
from tests.e2e.conftest import Daemon

TIMEOUT_MS = 60_000
"""How long an expectation waits: a model's load on a busy 2-core machine takes seconds (with
`flash_attn = "fastest"`, the default, a few more: both ways are timed at load)."""
# `expect` has a timeout of its own (5 s), apart from the page's.
expect.set_options(timeout=TIMEOUT_MS)


class Watched:
    """A page, its requests, and what went wrong in it (console errors, uncaught errors)."""

    def __init__(self, browser: Browser, daemon: Daemon, locale: str = "en-US") -> None:
        self.page, self.recorder = open_page(browser, locale=locale)
        self.page.set_default_timeout(TIMEOUT_MS)
        self.daemon = daemon
        self.problems: list[str] = []
        self.expected: list[re.Pattern[str]] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        where = message.location.get("url", "")
        text = f"{message.text} ({where})"
        if any(p.search(text) for p in self.expected):
            return
        self.problems.append(text)

    def expect_failed_load(self, status: int, path: str) -> None:
        """A resource answer the test causes on purpose, which chromium logs as an error."""
        self.expected.append(
            re.compile(rf"status of {status} .*\({re.escape(self.daemon.url + path)}")
        )

    def open(self, page: str) -> Page:
        self.page.goto(f"{self.daemon.url}/ui/#{page}")
        expect(self.page.locator(f"#page[data-page={page}]")).to_be_visible()
        return self.page

    def check(self) -> None:
        assert self.recorder.foreign(self.daemon.url) == []
        assert self.problems == []
