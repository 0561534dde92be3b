"""The one launcher of server processes for the tests and the benchmarks.

`start_daemon` writes a config into a work folder and starts `llmd serve` on a free port, its
output in WORK/daemon.log, and waits for a path (`/ready`, `/health`) to answer 200;
`spawn` starts any other server the same way (a benchmark's llama-server). A daemon serving
HTTPS is given the certificate to trust (`ca`): its URL, readiness checks and clients use it.
A `Daemon` is stopped with SIGTERM, and a start that fails raises with the end of its log, where
a crash is told. tests/e2e/conftest.py's fixtures and every bench script start their daemons here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"
LOG_TAIL = 3000
"""How much of a log's end a failure shows (characters)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5, context: ssl.SSLContext | None = None) -> bytes:
    """The body of a GET; an error status raises (`urllib.error.HTTPError`, an OSError)."""
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return resp.read()  # type: ignore[no-any-return]


@dataclass
class Daemon:
    """A server process on 127.0.0.1:`port`, its output in the file `log`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    argv: list[str] = field(default_factory=list)
    name: str = "daemon"
    """Who failed, in the errors of a start that failed."""
    ca: Path | None = None
    """The certificate to trust when it serves HTTPS; None: plain HTTP."""

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting `ca`, None for plain HTTP."""
        return ssl.create_default_context(cafile=self.ca) if self.ca else None

    def client(self, **kw: Any) -> openai.OpenAI:
        if (context := self.ssl_context) and "http_client" not in kw:
            kw["http_client"] = openai.DefaultHttpxClient(verify=context)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kw)

    def async_client(self) -> openai.AsyncOpenAI:
        context = self.ssl_context
        http = openai.DefaultAsyncHttpxClient(verify=context) if context else None
        return openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key="unused", max_retries=0, http_client=http
        )

    def get_json(self, path: str, timeout: float = 10) -> Any:
        """The JSON body of a GET, whatever its status (an error's body too)."""
        try:
            body = get(self.url + path, timeout, self.ssl_context)
        except urllib.error.HTTPError as exc:
            body = exc.read()
        return json.loads(body)

    def health(self) -> dict[str, object]:
        return self.get_json("/api/v1/health")  # type: ignore[no-any-return]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        """The log's end, where a crash is told."""
        return self.logs()[-LOG_TAIL:]

    def wait_until(self, ready: Callable[[], bool], seconds: float, interval: float = 0.2) -> None:
        """Poll `ready` (an OSError, an HTTP error status included, counts as not yet) until it
        says so; raise with the log's end if the process exits or `seconds` pass (stopping it)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(interval)
        self.stop()
        raise RuntimeError(
            f"{self.name} on {self.url} not ready in {seconds:.0f} s:\n{self.tail()}"
        )

    def wait_for(self, path: str, seconds: float = 120) -> None:
        """Until GET `path` answers 200."""

        context = self.ssl_context

        def answers() -> bool:
            with urllib.request.urlopen(self.url + path, timeout=2, context=context) as resp:
                return resp.status == 200  # type: ignore[no-any-return]

        self.wait_until(answers, seconds)

    def stop(self) -> int:
        """SIGTERM, and the exit status; killed (and TimeoutExpired raised) after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)


def spawn(
    argv: Sequence[str],
    port: int,
    log: Path,
    cwd: Path,
    name: str = "daemon",
    env: dict[str, str] | None = None,
) -> Daemon:
    """Start a server process listening on `port` (given in `argv`), output to `log`; `env`
    is added to this process's environment."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            # Unbuffered: a log read while it runs, or after a crash, holds all it wrote.
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )
    return Daemon(proc, port, log, list(argv), name)


def start_daemon(
    work: Path,
    config: str,
    ready: str | None = "/ready",
    seconds: float = 120,
    checkout: Path | None = None,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
) -> Daemon:
    """`llmd serve` with `config` written to WORK/llmd.toml, on a free port, output in
    WORK/daemon.log; back when `ready` answers 200 (None: at once, for the caller to wait).
    `checkout`: run the llmd of another source tree (bench/ab.py compares two); `env`: added
    to its environment (the systemd tests' NOTIFY_SOCKET); `ca`: the config serves HTTPS with
    this certificate, which the checks and clients trust."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "llmd.toml"
    path.write_text(config)
    port = free_port()
    argv = [sys.executable, "-m", "llmd", "serve", "--config", str(path), "--port", str(port)]
    extra = dict(env or {})
    if checkout is not None:
        extra["PYTHONPATH"] = str(checkout.resolve())
    daemon = spawn(argv, port, work / "daemon.log", work, env=extra)
    daemon.ca = ca
    if ready is not None:
        daemon.wait_for(ready, seconds)
    return daemon
