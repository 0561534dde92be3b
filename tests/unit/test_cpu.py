"""llmd.cpu: which llama.cpp CPU backend variant a process runs, and the start-up probe that
turns a CPU llama.cpp cannot run on into one line instead of a SIGILL in every model."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

from llmd import cpu
from llmd.systemd import with_backend

LIB = "/usr/lib/llmd/lib/python3.11/site-packages/llama_cpp/lib"
MAPS = f"""\
7f01-7f02 r--p 00000000 08:01 123 {LIB}/libggml-base.so.0.25.3
7f03-7f04 r-xp 00001000 08:01 124 {LIB}/libggml-cpu-haswell.so
7f05-7f06 r--p 00000000 08:01 125 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0
"""


def test_the_variant_is_the_cpu_backend_left_mapped() -> None:
    assert cpu.variant_in_maps(MAPS) == "haswell"
    linked = "7f-7f r-xp 0 08:01 1 /venv/site-packages/llama_cpp/lib/libggml-cpu.so.0.25.3\n"
    assert cpu.variant_in_maps(linked) == cpu.BUILT_IN
    assert cpu.variant_in_maps("7f-7f r-xp 0 08:01 1 /usr/lib/libc.so.6\n") is None


def test_variants_lists_the_installed_cpu_backends(tmp_path: Path) -> None:
    assert cpu.variants(tmp_path) == []
    for name in ("libggml-cpu-haswell.so", "libggml-cpu-sse42.so", "libggml-base.so"):
        (tmp_path / name).write_bytes(b"")
    assert cpu.variants(tmp_path) == ["haswell", "sse42"]
    cpu.load_backends(tmp_path / "missing")  # no variants there: nothing to load, no error


def test_the_status_line_names_the_variant() -> None:
    line = "serving 1 model, 0 requests running, 0 queued, 0.1 GB of 6.4 GB"
    assert with_backend(line, None) == line
    backend = cpu.CpuBackend("alderlake", ["AVX2", "AVX_VNNI", "OPENMP"])
    assert with_backend(line, backend) == line + ", CPU backend alderlake"
    assert backend.describe() == "alderlake (AVX2 AVX_VNNI)"


def test_the_probe_reports_this_machines_backend() -> None:
    backend = asyncio.run(cpu.probe(sys.executable))
    assert backend.variant  # "built-in" for pip's llama-cpp-python, a variant in the .deb
    assert backend.variant != "none"
    assert cpu.current() == backend


def fake_python(tmp_path: Path, body: str) -> str:
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_cpu_llama_cpp_cannot_run_on_is_said_in_one_line(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "kill -ILL $$")
    with pytest.raises(cpu.ProbeFailed, match=r"cannot run on this CPU: .*SIGILL.*x86-64-v2"):
        asyncio.run(cpu.probe(python))


def test_a_probe_that_fails_otherwise_gives_its_last_line(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 'Traceback' >&2; echo 'OSError: libggml.so' >&2; exit 3")
    with pytest.raises(cpu.ProbeFailed, match=r"probe failed \(exit 3\): OSError: libggml.so$"):
        asyncio.run(cpu.probe(python))


def test_the_libggml_loaded_is_the_one_libllama_links(tmp_path: Path) -> None:
    (tmp_path / "libggml.so").write_bytes(b"")
    assert cpu.libggml(tmp_path) == tmp_path / "libggml.so"
    # A wheel's three copies: libllama's NEEDED (the SONAME) is libggml.so.0.
    for name in ("libggml.so.0", "libggml.so.0.25.3", "libggml-base.so.0"):
        (tmp_path / name).write_bytes(b"")
    assert cpu.libggml(tmp_path) == tmp_path / "libggml.so.0"
