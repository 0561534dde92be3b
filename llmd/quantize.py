"""`llmd models quantize`: llama.cpp's own quantizer (llama_model_quantize), with progress,
and refusals for what would only waste time or data."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from llmd.cpu import load_backends
from llmd.gguf import FILE_TYPES, UNQUANTIZED, GGUFError, read_model

# Types that need no importance matrix (the IQ1/IQ2/IQ3 families do, and are left out).
TARGETS = {
    name.lower(): ftype
    for ftype, name in FILE_TYPES.items()
    if name.startswith(("Q", "F", "BF")) or name in ("IQ4_NL", "IQ4_XS")
}
TARGETS.pop("mxfp4_moe", None)


class QuantizeError(Exception):
    """A refusal or failure, with a message for the operator."""


_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")


def check(src: Path, dst: Path, qtype: str, allow_requantize: bool, force: bool) -> tuple[int, str]:
    """Refuse nonsense before any work; returns (llama_ftype, the input's quantization)."""
    key = qtype.lower()
    if key not in TARGETS:
        raise QuantizeError(
            f"unknown quantization type {qtype!r}; choose one of: {', '.join(sorted(TARGETS))}"
        )
    if not src.is_file():
        raise QuantizeError(f"{src}: no such file")
    try:
        model = read_model(src)
    except GGUFError as exc:
        raise QuantizeError(f"{src}: {exc}") from None
    if dst.resolve() == src.resolve():
        raise QuantizeError(f"the output {dst} would overwrite the input: choose another name")
    if dst.exists() and not force:
        raise QuantizeError(f"{dst} exists: pass --force to replace it")
    if not dst.parent.is_dir():
        raise QuantizeError(f"{dst.parent}: no such directory")
    if dst.suffix != ".gguf":
        raise QuantizeError(f"{dst}: the output must end in .gguf (the watcher ignores others)")
    current = model.info.quantization
    if current not in UNQUANTIZED and not allow_requantize:
        raise QuantizeError(
            f"{src} is already quantized ({current}); quantizing it again loses more quality "
            "than quantizing the original F16/BF16/F32 file. Use the original, or pass "
            "--allow-requantize to do it anyway"
        )
    return TARGETS[key], current


def quantize(
    src: Path,
    dst: Path,
    qtype: str,
    allow_requantize: bool = False,
    force: bool = False,
    threads: int = 0,
    out: TextIO = sys.stderr,
) -> None:
    ftype, current = check(src, dst, qtype, allow_requantize, force)
    import llama_cpp as lc

    progress = {"done": 0, "total": 0}

    @lc.llama_log_callback  # type: ignore[untyped-decorator]
    def on_log(level: int, text: bytes, _user: Any) -> None:
        line = text.decode("utf-8", "replace")
        if match := _PROGRESS.search(line):
            progress["done"], progress["total"] = int(match[1]), int(match[2])
            out.write(f"\r  tensor {match[1]}/{match[2]} {match[3][:40]:40}")
            out.flush()
        elif level == 4:  # GGML_LOG_LEVEL_ERROR
            out.write(f"\nllama.cpp: {line.rstrip()}\n")

    lc.llama_log_set(on_log, ctypes.c_void_p(0))
    load_backends()
    lc.llama_backend_init()
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = allow_requantize
    # Written under a hidden name and renamed at the end: a watched models_dir never sees
    # a half-written model.
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    out.write(f"quantizing {src} ({current}) to {dst} ({qtype.upper()})\n")
    started = time.monotonic()
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise QuantizeError(f"llama.cpp's quantizer failed (status {rc})")
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    size = dst.stat().st_size
    out.write(
        f"\ndone in {time.monotonic() - started:.1f} s: {dst} "
        f"({src.stat().st_size / 2**20:.0f} MiB -> {size / 2**20:.0f} MiB)\n"
    )
