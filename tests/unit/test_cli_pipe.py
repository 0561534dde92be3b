"""The `llmd` command with its output piped into a reader that stops early (`llmd usage | head`):
it ends quietly, with the status of a process killed by SIGPIPE, as Unix tools do, never with a
BrokenPipeError traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_usage_listing import T0, fill, usage_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose usage database holds 5,000 records (~600 KB of CSV, more than a pipe
    holds), and whose keys file has one key."""
    fill(tmp_path / "usage.db", [usage_row(T0 + n, n) for n in range(5000)])
    path = tmp_path / "llmd.toml"
    path.write_text(
        f'models_dir = "{tmp_path}"\n'
        f'[usage]\ndatabase = "{tmp_path / "usage.db"}"\n'
        f'[auth]\nkeys_file = "{tmp_path / "keys.toml"}"\n'
    )
    return path


def llmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmd", *args]


def test_usage_into_head_ends_quietly(config: Path) -> None:
    # As a user types it: the shell's pipe, head reading one line of a large CSV.
    cmd = " ".join(llmd("usage", "--format", "csv", "--config", str(config)))
    out = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stdout.startswith("id,time,request_id,")
    assert out.stderr == ""
    assert out.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize(
    "args",
    [
        ("usage",),
        ("usage", "--format", "json"),
        ("usage", "--group-by", "day"),
        ("audit",),
        ("keys", "list"),
        ("check-config",),
    ],
)
def test_every_printing_command_ends_quietly_on_a_closed_pipe(
    config: Path, args: tuple[str, ...]
) -> None:
    # A pipe whose reader is gone before the first write: every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            llmd(*args, "--config", str(config)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 128 + signal.SIGPIPE
