"""systemd integration in-process (llmd/systemd.py): the status line rendered from the status
view, the watchdog interval and pings of the notifier, and the watchdog state /api/v1/health
tells. The daemon's life cycle under systemd
is tested end to end (tests/e2e/test_systemd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmd.models.status import MemoryStatus, ModelStatus, Overview, ProcessStatus
from llmd.server.health import watchdog
from llmd.systemd import Notifier, status_text
from tests.notify_socket import NotifySocket


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def test_status_line_counts_states_requests_and_memory_against_the_budget() -> None:
    view = Overview(
        models=[
            ModelStatus(name="a", state="ready", current=ProcessStatus(running=3, waiting=1)),
            ModelStatus(name="b", state="loading"),
            ModelStatus(name="c", state="unloaded"),
        ],
        memory=MemoryStatus(budget_bytes=6_000_000_000, used_bytes=1_200_000_000),
    )
    assert status_text(view) == (
        "serving 1 model (1 loading, 1 on demand), 3 requests running, 1 queued, 1.2 GB of 6.0 GB"
    )


def test_watchdog_interval_is_half_of_watchdog_usec(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert notifier.watchdog_timeout_s == 30.0
    assert notifier.watchdog_interval_s == 15.0
    assert notifier.last_ping is None
    notifier.watchdog()
    assert notifier.last_ping is not None
    notify.wait_for("WATCHDOG=1", timeout=10)
    notifier.close()
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    other = Notifier()
    assert other.watchdog_interval_s is None
    other.close()


def test_health_tells_both_watchdogs(notify: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    # No notifier (an app built by a test) and a notifier run by hand: no systemd watchdog.
    off = {
        "enabled": False,
        "timeout_s": None,
        "ping_interval_s": None,
        "since_ping_s": None,
        "model_hang_timeout_s": 60.0,
    }
    assert watchdog(None, 60.0) == off
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    assert watchdog(Notifier(), 60.0) == off
    # Under systemd with WatchdogSec=4: the ping's age appears once a ping went out.
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    notifier = Notifier()
    state = watchdog(notifier, 12.5)
    assert state == {
        "enabled": True,
        "timeout_s": 4.0,
        "ping_interval_s": 2.0,
        "since_ping_s": None,
        "model_hang_timeout_s": 12.5,
    }
    notifier.watchdog()
    since = watchdog(notifier, 12.5)["since_ping_s"]
    assert isinstance(since, float) and since >= 0
    notifier.close()
