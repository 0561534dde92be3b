"""systemd service notifications (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Run by hand (no $NOTIFY_SOCKET) every call here is a no-op. Under systemd (`Type=notify`) the
daemon says READY=1 once it can answer requests, keeps a human STATUS= line fresh for
`systemctl status`, pings the watchdog from the event loop that serves requests (a stuck loop
stops the pings, and systemd kills and restarts the service), and brackets reloads and the
shutdown with RELOADING=1 / READY=1 and STOPPING=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

import sdnotify

from llmd import cpu

if TYPE_CHECKING:
    from llmd.models import ModelManager
    from llmd.models.status import Overview

log = logging.getLogger("llmd.systemd")

STATUS_INTERVAL_S = 5.0
"""How often the STATUS= line is refreshed; cheap (a few /proc reads), and fresh enough for a
person reading `systemctl status`."""


class Notifier:
    """sd_notify over $NOTIFY_SOCKET, silent when there is none."""

    def __init__(self) -> None:
        # sdnotify reads $NOTIFY_SOCKET itself ("@name" is an abstract socket).
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.enabled:
            self._notifier = sdnotify.SystemdNotifier()
            if self._notifier.socket is None:
                log.warning(
                    "NOTIFY_SOCKET=%s: cannot connect; no systemd notifications",
                    os.environ["NOTIFY_SOCKET"],
                )
                self.enabled = False
            else:
                # A notification must never stall the event loop: if the receiver's buffer is
                # full the datagram is dropped (sdnotify swallows the error) instead.
                self._notifier.socket.setblocking(False)
        self.watchdog_timeout_s = _watchdog_timeout() if self.enabled else None
        """What the unit asked for (WatchdogSec=): systemd kills us after this long unpinged."""
        self.watchdog_interval_s = (
            self.watchdog_timeout_s / 2 if self.watchdog_timeout_s is not None else None
        )
        """How often we ping: half the timeout, as sd_watchdog_enabled(3) advises."""
        self.last_ping: float | None = None
        """time.monotonic() of the last WATCHDOG=1 sent (the health answer shows its age)."""
        self._stopping = False

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self.enabled = False

    def notify(self, *lines: str) -> None:
        if self._notifier is not None and self.enabled:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload it asked for.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: finishing in-flight requests")
        self._stopping = True

    def status(self, text: str) -> None:
        if self._stopping:
            return  # "stopping" stays the status until the end
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
        if self.enabled:
            self.last_ping = time.monotonic()


def _watchdog_timeout() -> float | None:
    """$WATCHDOG_USEC in seconds, or None when not asked (or asked of another process)."""
    env = os.environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: watchdog disabled", usec)
        return None
    return value / 1e6 if value > 0 else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def status_line(manager: ModelManager) -> str:
    """What a person wants from `systemctl status`: models, load, memory against the budget."""
    # Imported when first used: `llmd check-config` imports this module through llmd.daemon
    # and should not load the model manager.
    from llmd.models.status import overview

    return with_backend(status_text(overview(manager)), cpu.current())


def with_backend(text: str, backend: cpu.CpuBackend | None) -> str:
    """The status line with the llama.cpp CPU backend variant the machine runs."""
    return f"{text}, CPU backend {backend.variant}" if backend else text


def status_text(view: Overview) -> str:
    """The status line of a status view."""
    states: dict[str, int] = {}
    for model in view.models:
        states[model.state] = states.get(model.state, 0) + 1
    ready = states.pop("ready", 0)
    on_demand = states.pop("unloaded", 0)
    states.pop("stopped", None)
    parts = [f"serving {ready} model{'s' if ready != 1 else ''}"]
    others = [f"{n} {state}" for state, n in sorted(states.items())]
    if on_demand:
        others.append(f"{on_demand} on demand")
    if others:
        parts[0] += f" ({', '.join(others)})"
    versions = [v for model in view.models for v in model.versions]
    running, queued = sum(v.running for v in versions), sum(v.waiting for v in versions)
    parts.append(f"{running} request{'s' if running != 1 else ''} running")
    parts.append(f"{queued} queued")
    parts.append(f"{_gb(view.memory.used_bytes)} of {_gb(view.memory.budget_bytes)}")
    return ", ".join(parts)


async def keep_alive(notifier: Notifier, manager: ModelManager) -> None:
    """Ping the watchdog and refresh STATUS= until cancelled.

    This runs on the event loop that serves requests, on purpose: if that loop is stuck, the
    pings stop and systemd restarts the service.
    """
    if not notifier.enabled:
        return
    interval = notifier.watchdog_interval_s
    tick = min(interval, STATUS_INTERVAL_S) if interval else STATUS_INTERVAL_S
    next_status = 0.0
    loop = asyncio.get_running_loop()
    while True:
        if interval:
            notifier.watchdog()
        if loop.time() >= next_status:
            with contextlib.suppress(Exception):  # a status line must never end the loop
                notifier.status(status_line(manager))
            next_status = loop.time() + STATUS_INTERVAL_S
        await asyncio.sleep(tick)
