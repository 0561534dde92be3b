"""llmd/engine/amx.py: a build whose AMX kernels die of SIGILL is caught in a forked child and
the model loaded without llama.cpp's extra buffers. The fault itself (GCC 12's dropped tile
shapes, docs/operations.md) needs such a build on a CPU with AMX; here the child's work is a
real decode of the real model, or a stand-in that dies the way the fault does."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.daemon import MODELS, SMOL
from llmd.engine import amx


def _die_of(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


def test_only_sigill_counts_as_the_fault() -> None:
    assert amx.survives(lambda: _die_of(signal.SIGILL)) is False
    assert amx.survives(lambda: None) is True
    assert amx.survives(lambda: _die_of(signal.SIGSEGV)) is True  # the real load's to meet
    assert amx.survives(lambda: _die_of(signal.SIGABRT)) is True

    def fails() -> None:
        raise RuntimeError("no model")

    assert amx.survives(fails) is True


def test_a_child_that_hangs_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amx, "TIMEOUT_S", 0.2)
    assert amx.survives(signal.pause) is True


def test_no_child_without_amx_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    assert amx.extra_buffers_usable(Path("/nonexistent.gguf"), ["AVX2", "FMA"]) is True


def test_a_faulting_build_turns_the_extra_buffers_off_once_per_model(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def faulting(path: Path) -> int:
        _die_of(signal.SIGILL)
        return 0

    children: list[bool] = []
    survives = amx.survives

    def counted(work: Callable[[], object]) -> bool:
        children.append(survives(work))
        return children[-1]

    monkeypatch.setattr(amx, "_decode_one_batch", faulting)
    monkeypatch.setattr(amx, "survives", counted)
    monkeypatch.setattr(amx, "_checked", {})
    path = Path("/models/some.gguf")
    assert amx.extra_buffers_usable(path, ["AVX512", "AMX_INT8"]) is False
    assert amx.extra_buffers_usable(path, ["AVX512", "AMX_INT8"]) is False
    assert children == [False]  # one child for the model file; the second load asked nobody
    assert "loaded without its extra buffer types" in caplog.text
    assert len(caplog.records) == 1  # and said so once


def test_the_child_decodes_the_real_model() -> None:
    """The child's work on the real model ends normally on a build without the fault (this
    one: scripts/setup builds llama.cpp without AMX, llmd/engine/amx.py's docstring)."""
    from llmd import cpu

    cpu.load_backends()
    if "AMX_INT8" in cpu.inspect().features:
        pytest.fail("scripts/setup builds llama.cpp without its AMX kernels: rerun it")
    path = MODELS / SMOL
    read, write = os.pipe()

    def decode_and_say() -> None:
        os.write(write, b"status %d" % amx._decode_one_batch(path))

    assert amx.survives(decode_and_say) is True
    os.close(write)
    assert os.read(read, 16) == b"status 0"
    os.close(read)
