"""systemd integration through the real daemon and a real model: sd_notify messages on a
NOTIFY_SOCKET the test binds, SIGHUP reloads (valid, invalid, a storm), start-up faults, and
the unit file."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from bench.daemon import start_daemon
from llmd.systemd import Notifier
from tests.e2e.conftest import MODELS, ROOT, SMOL, free_port
from tests.notify_socket import NotifySocket

GEMMA = "gemma-3-270m-q4_k_m.gguf"


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, config: Path):
        self.proc, self.port, self.log, self.config = proc, port, log, config
        self.url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def model_ids(self) -> set[str]:
        data = httpx.get(self.url + "/v1/models", timeout=10).json()["data"]
        return {card["id"] for card in data}

    def chat(self, model: str, max_tokens: int = 4) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": max_tokens,
            },
            timeout=60,
        )


def smol_table(name: str = "smollm2", aliases: tuple[str, ...] = ()) -> str:
    return f'[models.{name}]\npath = "{SMOL}"\naliases = {list(aliases)!r}\n'.replace("'", '"')


# A models directory holding SmolLM2 alone: Gemma is added by a table that points outside it,
# so removing that table removes Gemma (a file in the directory would stay served by name).
SMOL_ONLY = Path(tempfile.gettempdir()) / f"llmd-test-smol-only-{os.getpid()}"
HEAD = f'models_dir = "{SMOL_ONLY}"\n[engine]\nctx_per_seq = 512\nparallel = 2\n'


@pytest.fixture(scope="module", autouse=True)
def smol_only_dir() -> Iterator[None]:
    SMOL_ONLY.mkdir(exist_ok=True)
    target = SMOL_ONLY / SMOL
    if not target.exists():
        try:
            os.link(MODELS / SMOL, target)
        except OSError:
            shutil.copy(MODELS / SMOL, target)
    yield
    shutil.rmtree(SMOL_ONLY, ignore_errors=True)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(config: str, env: dict[str, str]) -> Served:
        # Not waited for: each test reads the notify socket to see how start-up goes.
        daemon = start_daemon(tmp_path, config, ready=None, env=env)
        proc, port, log, path = daemon.proc, daemon.port, daemon.log, tmp_path / "llmd.toml"
        served = Served(proc, port, log, path)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def _hup(served: Served, notify: NotifySocket) -> None:
    """SIGHUP, then wait for RELOADING=1 and the READY=1 that ends the reload."""
    mark = len(notify.lines())
    served.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", mark)
    notify.wait_for("READY=1", reloading)


def test_notify_life_cycle_and_reloads(launch: Callable[..., Served], notify: NotifySocket) -> None:
    served = launch(
        HEAD + smol_table(aliases=("smol",)),
        {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
    )
    ready = notify.wait_for("READY=1")
    # READY=1 means the daemon can answer: listening, and the configured model loaded.
    assert httpx.get(served.url + "/ready", timeout=10).status_code == 200
    assert served.chat("smol").status_code == 200
    status = notify.lines()[notify.wait_for("STATUS=serving ", ready)]
    assert status.startswith("STATUS=serving 1 model, 0 requests running, 0 queued")
    # Then the llama.cpp CPU backend the start-up probe found ("built-in" for pip's build).
    assert re.search(r", \d+\.\d GB of \d+\.\d GB, CPU backend [\w.-]+$", status), status
    # Watchdog pings keep coming (every 0.2 s for WATCHDOG_USEC=0.4 s).
    first = notify.wait_for("WATCHDOG=1", ready)
    notify.wait_for("WATCHDOG=1", first + 1)

    # A valid reload: add a model, drop an alias, while a long request is in flight.
    long_request: dict[str, Any] = {}

    def run_long() -> None:
        long_request["response"] = httpx.post(
            served.url + "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Count to one hundred."}],
                "max_tokens": 60,
                "ignore_eos": True,
            },
            timeout=120,
        )

    worker = threading.Thread(target=run_long)
    worker.start()
    time.sleep(0.3)
    served.config.write_text(HEAD + smol_table() + f'[models.gemma]\npath = "{MODELS / GEMMA}"\n')
    _hup(served, notify)
    worker.join(120)
    response = long_request["response"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 60  # not cut by the reload
    assert served.model_ids() == {"smollm2", "gemma"}
    assert served.chat("smol").status_code == 404
    assert (
        httpx.post(
            served.url + "/v1/completions",
            json={"model": "gemma", "prompt": "The sky is", "max_tokens": 3},
            timeout=60,
        ).status_code
        == 200
    )
    assert "configuration reloaded" in served.logs()

    # Re-tuning a model restarts its process; removing one stops it.
    served.config.write_text(
        HEAD + smol_table().replace("[models.smollm2]\n", "[models.smollm2]\nparallel = 1\n")
    )
    _hup(served, notify)
    assert served.model_ids() == {"smollm2"}
    # Gemma's process stops once drained (in the background); SmolLM2 runs with parallel 1.
    deadline = time.monotonic() + 60
    while True:
        health = httpx.get(served.url + "/api/v1/health", timeout=10).json()
        if [m["name"] for m in health["models"]] == ["smollm2"]:
            break
        assert time.monotonic() < deadline, health["models"]
        time.sleep(0.1)
    assert [m["parallel"] for m in health["models"]] == [1]
    assert served.chat("smollm2").status_code == 200

    # An invalid file is refused with file, line and reason; the running config stays.
    served.config.write_text(HEAD + smol_table() + "[server]\nbogus = 1\n")
    _hup(served, notify)
    logs = served.logs()
    assert f"reload refused, the previous configuration stays: {served.config}:" in logs
    assert "server.bogus: unknown setting" in logs
    assert served.model_ids() == {"smollm2"}
    assert served.chat("smollm2").status_code == 200

    # A storm of SIGHUPs while the file changes: one consistent config, the last one.
    mark = len(notify.lines())
    for i in range(10):
        served.config.write_text(HEAD + smol_table(aliases=(f"storm{i}",)))
        served.proc.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    while served.model_ids() != {"smollm2", "storm9"}:
        assert time.monotonic() < deadline, served.model_ids()
        time.sleep(0.1)
    last_reloading = max(i for i, msg in enumerate(notify.lines()) if msg == "RELOADING=1")
    notify.wait_for("READY=1", last_reloading)
    reloads = notify.lines()[mark:].count("RELOADING=1")
    assert 1 <= reloads < 10  # coalesced
    assert served.model_ids() == {"smollm2", "storm9"}
    assert served.chat("storm9").status_code == 200

    # SIGTERM: STOPPING=1 and a clean exit.
    mark = len(notify.lines())
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    stopping = notify.wait_for("STOPPING=1", mark)
    after = notify.lines()[stopping:]
    assert "STATUS=stopping: finishing in-flight requests" in after
    assert not any(msg.startswith("STATUS=serving") for msg in after)
    assert "Traceback" not in served.logs()


def test_reload_applies_logging_settings(
    launch: Callable[..., Served], notify: NotifySocket
) -> None:
    served = launch(HEAD, {"NOTIFY_SOCKET": str(notify.path)})
    notify.wait_for("READY=1")
    served.config.write_text(HEAD + '[logging]\nformat = "json"\n')
    _hup(served, notify)
    resp = httpx.get(served.url + "/v1/models", timeout=10)
    rid = resp.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while rid not in served.logs():
        assert time.monotonic() < deadline, served.logs()
        time.sleep(0.05)
    line = next(x for x in served.logs().splitlines() if rid in x)
    assert json.loads(line)["request_id"] == rid


def test_ready_without_models_is_immediate_and_silent_without_socket(
    launch: Callable[..., Served], notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No model: READY=1 as soon as the socket listens.
    served = launch(HEAD, {"NOTIFY_SOCKET": str(notify.path)})
    ready = notify.wait_for("READY=1")
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200
    assert notify.lines()[notify.wait_for("STATUS=", ready)].startswith("STATUS=serving 0 models")
    # The unit asked for no watchdog: the health answer says so.
    state = httpx.get(served.url + "/api/v1/health", timeout=10).json()["watchdog"]
    assert state["enabled"] is False and state["since_ping_s"] is None
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    # Run by hand (no NOTIFY_SOCKET): nothing is sent anywhere, and nothing complains.
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    quiet = Notifier()
    assert quiet.enabled is False and quiet.watchdog_interval_s is None
    quiet.ready("x")  # a no-op


def test_health_tells_the_watchdog_the_unit_asked_for(
    launch: Callable[..., Served], notify: NotifySocket
) -> None:
    served = launch(
        HEAD + "hang_timeout_s = 45\n",  # under [engine], the last table of HEAD
        {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
    )
    ready = notify.wait_for("READY=1")
    notify.wait_for("WATCHDOG=1", ready)  # a ping went out: its age is told
    state = httpx.get(served.url + "/api/v1/health", timeout=10).json()["watchdog"]
    since = state.pop("since_ping_s")
    assert isinstance(since, float) and since >= 0
    assert state == {
        "enabled": True,
        "timeout_s": 0.4,
        "ping_interval_s": 0.2,
        "model_hang_timeout_s": 45.0,
    }
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0


def _serve(config: Path | str, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def _one_clear_line(out: subprocess.CompletedProcess[str], expected: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], out.stderr


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("missing.toml", "missing.toml: cannot read: No such file or directory"),
        (".", "cannot read: Is a directory"),
        ("bad-key.toml", "bad-key.toml:3: server.bogus: unknown setting"),
        ("bad-type.toml", "bad-type.toml:3: engine.parallel: Input should be a valid integer"),
    ],
)
def test_bad_config_stops_start_up_with_one_line(
    tmp_path: Path, config: str, expected: str
) -> None:
    (tmp_path / "bad-key.toml").write_text(f'models_dir = "{MODELS}"\n[server]\nbogus = 1\n')
    (tmp_path / "bad-type.toml").write_text(
        f'models_dir = "{MODELS}"\n[engine]\nparallel = "many"\n'
    )
    out = _serve(tmp_path / config, cwd=tmp_path)
    assert out.returncode == 2
    _one_clear_line(out, expected)


def test_missing_models_dir_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "llmd.toml"
    config.write_text(f'models_dir = "{tmp_path / "nowhere"}"\n')
    out = _serve(config, "--port", str(free_port()), cwd=tmp_path)
    assert out.returncode == 1
    _one_clear_line(out, f"cannot start: models directory {tmp_path / 'nowhere'} does not exist")
    checked = subprocess.run(
        [sys.executable, "-m", "llmd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1 and "does not exist" in checked.stderr


def test_unwritable_models_dir_or_unreadable_config_stops_start_up(tmp_path: Path) -> None:
    base = tmp_path
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads and writes anywhere: run as nobody, like the service user
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        base = Path(tempfile.mkdtemp(prefix="llmd-test-", dir="/tmp"))  # nobody can reach it
        base.chmod(0o755)
    try:
        models = base / "models"
        models.mkdir(mode=0o555)
        config = base / "llmd.toml"
        config.write_text(f'models_dir = "{models}"\n')
        config.chmod(0o644)
        command = [*prefix, sys.executable, "-m", "llmd", "serve", "--config", str(config)]
        command += ["--port", str(free_port())]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        run = functools.partial(
            subprocess.run, command, capture_output=True, text=True, cwd=base, timeout=60, env=env
        )
        out = run()
        assert out.returncode == 1
        _one_clear_line(out, f"models directory {models} is not writable by this user")
        config.chmod(0o000)
        out = run()
        assert out.returncode == 2
        _one_clear_line(out, f"{config}: cannot read: Permission denied")
    finally:
        if base != tmp_path:
            shutil.rmtree(base)


def test_port_in_use_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "llmd.toml"
    config.write_text(f'models_dir = "{MODELS}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _serve(config, "--port", str(port), cwd=tmp_path)
    assert out.returncode == 1
    _one_clear_line(out, f"cannot listen on 127.0.0.1:{port}: address already in use")


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "systemd" / "llmd.service").read_text()
    for needed in (
        "Type=notify",
        "User=llmd",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/llmd",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "MemoryMax=",
        "Restart=on-failure",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/llmd check-config",
        "ExecReload=",
    ):
        assert needed in unit
    # verify wants the commands to exist: point it at this checkout's llmd.
    llmd = Path(sys.executable).parent / "llmd"
    (tmp_path / "llmd.service").write_text(unit.replace("/usr/bin/llmd", str(llmd)))
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "llmd.service")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
