"""The in-tree half of scripts/test-deb: drive the installed /usr/bin/llmd inside a Debian 12
chroot as the llmd user, with a NOTIFY_SOCKET this script listens on, and print the numbers.

Usage: deb_check.py TREE PHASE   (PHASE: idle = no model configured, full = smollm2 configured)
Uses only the standard library: it runs on the build host's Python.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Notify:
    def __init__(self) -> None:
        self.name = f"llmd-test-deb-{os.getpid()}"  # abstract: no path to share with the chroot
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.lines: list[tuple[float, str]] = []

    def wait_for(self, want: str, after: int = 0, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.lines)):
                if self.lines[i][1] == want or (
                    not want.endswith("=1") and self.lines[i][1].startswith(want)
                ):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [line for _, line in self.lines[after:] if line != "WATCHDOG=1"]
                raise SystemExit(f"deb_check: no {want!r}; saw {seen[-20:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.lines.extend((now, line) for line in data.decode().splitlines())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start(tree: str, notify: Notify, port: int) -> tuple[subprocess.Popen[bytes], float]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "NOTIFY_SOCKET": "@" + notify.name,
        "WATCHDOG_USEC": "1000000",
    }
    command = ["chroot", "--userspec=llmd:llmd", tree, "/usr/bin/llmd", "serve"]
    command += ["--config", "/etc/llmd/llmd.toml", "--port", str(port)]
    started = time.monotonic()
    # chroot execs llmd: this pid is the daemon's.
    return subprocess.Popen(command, env=env), started


def post(port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def stop(proc: subprocess.Popen[bytes], notify: Notify) -> None:
    mark = len(notify.lines)
    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", mark)
    code = proc.wait(60)
    if code != 0:
        raise SystemExit(f"deb_check: exit status {code} after SIGTERM")
    print("deb_check: SIGTERM -> STOPPING=1, exit 0")


def ready_times(tree: str, notify: Notify, runs: int) -> list[float]:
    """Seconds from starting `llmd serve` to READY=1, for a few fresh starts."""
    times = []
    for _ in range(runs):
        mark = len(notify.lines)
        proc, started = start(tree, notify, free_port())
        try:
            times.append(notify.lines[notify.wait_for("READY=1", mark)][0] - started)
            stop(proc, notify)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return times


def main() -> None:
    tree, phase = sys.argv[1], sys.argv[2]
    notify = Notify()
    if phase == "idle":
        # The first start after install reads everything from disk; later ones are warm.
        times = ready_times(tree, notify, 3)
        print("deb_check: idle: READY=1 after start: " + ", ".join(f"{t:.2f} s" for t in times))
    port = free_port()
    mark = len(notify.lines)
    proc, started = start(tree, notify, port)
    try:
        ready = notify.wait_for("READY=1", mark)
        ready_s = notify.lines[ready][0] - started
        status = notify.lines[notify.wait_for("STATUS=serving", ready)][1]
        first = notify.wait_for("WATCHDOG=1", ready)
        notify.wait_for("WATCHDOG=1", first + 1)
        print(f"deb_check: {phase}: READY=1 {ready_s:.2f} s after start; {status}; watchdog pings")
        if phase == "idle":
            time.sleep(2)
            print(f"deb_check: idle daemon RSS, no model: {rss_kib(proc.pid) / 1024:.0f} MiB")
        else:
            out = post(
                port,
                "/v1/chat/completions",
                {
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                },
            )
            text = out["choices"][0]["message"]["content"]  # type: ignore[index]
            print(f"deb_check: chat completion from the installed package: {text!r}")
            assert text, out
            mark = len(notify.lines)
            proc.send_signal(signal.SIGHUP)
            reloading = notify.wait_for("RELOADING=1", mark)
            notify.wait_for("READY=1", reloading)
            print("deb_check: SIGHUP -> RELOADING=1, READY=1")
        stop(proc, notify)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
