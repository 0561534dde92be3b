"""systemd integration in-process (llmd/systemd.py): the status line rendered from the status
view, and the watchdog interval and pings of the notifier. The daemon's life cycle under systemd
is tested end to end (tests/e2e/test_systemd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmd.models.status import MemoryStatus, ModelStatus, Overview, ProcessStatus
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
    assert notifier.watchdog_interval_s == 15.0
    notifier.watchdog()
    notify.wait_for("WATCHDOG=1", timeout=10)
    notifier.close()
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    other = Notifier()
    assert other.watchdog_interval_s is None
    other.close()
