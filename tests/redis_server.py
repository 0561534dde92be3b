"""A real `redis-server` for the tests: on a free port, in a temporary directory, nothing kept
on disk; killed (SIGKILL, as a crash would) and started again on the same port at will, or
frozen (SIGSTOP, a Redis too slow to answer) and thawed.

`scripts/setup` installs redis-server when it is missing, so the tests that use it never skip:
a machine without it fails them, loudly. A test module's fixture is `with running(tmp) as r:
yield r` (pytest fixtures are not imported across modules here).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from bench.daemon import free_port

START_TIMEOUT_S = 20.0


class RedisServer:
    """One redis-server process; `url` stays the same across kill() and start()."""

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup (apt-get)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again) on its port; back once it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.logs()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING: {self.logs()}")
            time.sleep(0.05)

    def ping(self) -> bool:
        """Whether it answers PING (a raw RESP exchange: no client library needed)."""
        auth = b""
        if self.password:
            pw = self.password.encode()
            auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                got = b""
                while b"PONG" not in got and len(got) < 256:
                    chunk = s.recv(256)
                    if not chunk:
                        return False
                    got += chunk
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing saved, connections dropped mid-call."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: Redis still accepts connections (the kernel does) but answers nothing, as
        a Redis stuck in a long command or a swapping box would."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it answers again, with every entry it held."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"


@contextmanager
def running(workdir: Path, password: str | None = None) -> Iterator[RedisServer]:
    """A started RedisServer, killed when the block ends (however it ends)."""
    server = RedisServer(workdir, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
