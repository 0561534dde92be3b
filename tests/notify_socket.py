"""A stand-in for systemd's notification socket, for the tests of sd_notify: the unit tests of the
notifier and the daemon's life cycle end to end."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self._lock:
                self.messages.extend(data.decode().splitlines())

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, line: str, after: int = 0, timeout: float = 120) -> int:
        """Index of the first message at or after `after` that is `line` ("READY=1"), or
        starts with it ("STATUS=serving")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.lines()[after:], start=after):
                if msg == line or (not line.endswith("=1") and msg.startswith(line)):
                    return i
            time.sleep(0.05)
        got = [msg for msg in self.lines()[after:] if msg != "WATCHDOG=1"][-20:]
        raise AssertionError(f"no {line!r} after #{after}; got (less WATCHDOG=1) {got}")

    def close(self) -> None:
        self.sock.close()
