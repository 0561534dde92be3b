"""The real daemon, started for a benchmark: its config in a work folder, on a free port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()  # type: ignore[no-any-return]


class BenchDaemon:
    """`llmd serve` with `config` written to WORK/llmd.toml, its output in WORK/daemon.log."""

    def __init__(self, work: Path, config: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = work / "llmd.toml"
        path.write_text(config)
        self.log_path = work / "daemon.log"
        self.log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "llmd", "serve", "--config", str(path)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )

    def wait_until(self, ready: Callable[[], bool], seconds: float, interval: float) -> None:
        """Poll `ready` (HTTP errors, a 503 included, count as not yet) until it says so."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{tail}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(interval)
        raise RuntimeError(f"daemon on {self.url} not ready in {seconds:.0f} s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()
