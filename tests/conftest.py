"""Fixtures that start the real daemon, with the real models, on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma-3-270m-q4_k_m.gguf"


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {secret}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kw)  # type: ignore[arg-type]

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def health(self) -> dict[str, object]:
        return httpx.get(self.url + "/api/v1/health", timeout=10).json()  # type: ignore[no-any-return]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return int(self.proc.returncode)


def start_daemon(
    tmp: Path, config: str, wait_ready: bool = True, models_dir: Path = MODELS
) -> Daemon:
    port = free_port()
    path = tmp / "llmd.toml"
    path.write_text(f'models_dir = "{models_dir}"\n' + config)
    log = tmp / "daemon.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmd", "serve", "--config", str(path), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
    daemon = Daemon(proc, port, log)
    deadline = time.monotonic() + 120
    path_to_wait = "/ready" if wait_ready else "/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{daemon.logs()}")
        try:
            if httpx.get(daemon.url + path_to_wait, timeout=2).status_code == 200:
                return daemon
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    daemon.stop()
    raise RuntimeError(f"daemon not ready in time:\n{daemon.logs()}")


BASE_CONFIG = f"""
[server]
default_model = "smollm2"
max_queue = 32

[engine]
ctx_per_seq = 1024
parallel = 16
batch_size = 256

[models.smollm2]
path = "{SMOL}"
aliases = ["smol"]

[models.gemma3-270m]
path = "{GEMMA}"
parallel = 2
"""


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon serving both real models, shared by the API tests."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), BASE_CONFIG)
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """A daemon of a test's own, with its own config; stopped when the test ends."""
    started: list[Daemon] = []

    def make(config: str, wait_ready: bool = True) -> Daemon:
        d = start_daemon(tmp_path / f"d{len(started)}", config, wait_ready)
        started.append(d)
        return d

    for sub in range(4):
        (tmp_path / f"d{sub}").mkdir()
    yield make
    for d in started:
        d.stop()
