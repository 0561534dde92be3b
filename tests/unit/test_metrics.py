"""The metrics endpoint's access rule (llmd/metrics.py); the metrics themselves are read from the
real daemon (tests/e2e/test_metrics.py)."""

from __future__ import annotations

from llmd.metrics import client_allowed


def test_client_allowed() -> None:
    assert client_allowed("loopback", "127.0.0.1") and client_allowed("loopback", "::1")
    assert not client_allowed("loopback", "192.168.1.20")
    assert client_allowed("all", "192.168.1.20") and not client_allowed("none", "127.0.0.1")
