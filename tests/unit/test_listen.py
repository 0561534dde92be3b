"""Start-up's listen(): a LAN address not yet on an interface at boot is waited for (and said),
an address in use fails at once."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

import pytest

from llmd.daemon import listen
from llmd.systemd import Notifier


class Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def notify(self, *lines: str) -> None:
        self.lines += lines

    def status(self, text: str) -> None:
        self.lines.append(f"STATUS={text}")


def starts_after(failures: list[int]) -> tuple[list[int], Callable[[], Awaitable[None]]]:
    calls: list[int] = []

    async def start() -> None:
        calls.append(1)
        if failures:
            raise OSError(failures.pop(0), "cannot bind")

    return calls, start


def test_an_address_not_up_yet_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    calls, start = starts_after([errno.EADDRNOTAVAIL, errno.EADDRNOTAVAIL])
    notifier = Recorder()
    with caplog.at_level("INFO", logger="llmd"):
        asyncio.run(listen(start, "192.168.1.20", notifier, wait_s=5, retry_s=0.01))
    assert len(calls) == 3
    assert "STATUS=waiting for address 192.168.1.20 (server.host)" in notifier.lines
    assert "WATCHDOG=1" in notifier.lines
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no network interface has that address" in m for m in messages) == 1
    assert "address 192.168.1.20 is up: listening" in messages


def test_an_address_that_never_comes_fails_after_the_wait() -> None:
    calls, start = starts_after([errno.EADDRNOTAVAIL] * 1000)
    with pytest.raises(OSError) as raised:
        asyncio.run(listen(start, "10.9.9.9", Recorder(), wait_s=0.05, retry_s=0.01))
    assert raised.value.errno == errno.EADDRNOTAVAIL
    assert 2 <= len(calls) < 1000


def test_an_address_in_use_fails_at_once() -> None:
    calls, start = starts_after([errno.EADDRINUSE])
    with pytest.raises(OSError) as raised:
        asyncio.run(listen(start, "127.0.0.1", Recorder(), wait_s=5, retry_s=0.01))
    assert raised.value.errno == errno.EADDRINUSE
    assert len(calls) == 1


def test_a_real_listener_retries_cleanly_once_the_address_is_up() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface: EADDRNOTAVAIL, as a LAN address before DHCP.
    # The next attempt (the address "up": loopback here) must start on a clean runner.
    from aiohttp import web

    from llmd.daemon import open_site

    async def main() -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        hosts = ["192.0.2.1", "127.0.0.1"]
        try:
            await listen(
                lambda: open_site(runner, hosts.pop(0), 0, None),
                "192.0.2.1",
                Recorder(),
                wait_s=5,
                retry_s=0.01,
            )
            assert hosts == []
            assert len(runner.sites) == 1
            assert runner.addresses[0][0] == "127.0.0.1"
        finally:
            await runner.cleanup()

    asyncio.run(main())
