"""llama.cpp's CPU backend: which build of it this machine runs, and loading it.

The Debian package builds llama.cpp with its CPU backend as run-time variants
(`GGML_BACKEND_DL=ON`, `GGML_CPU_ALL_VARIANTS=ON`, as llama.cpp's own releases and Ollama do):
one `libggml-cpu-<variant>.so` per instruction-set level (sse42, sandybridge, haswell,
skylakex, icelake, alderlake, zen4, ...) next to `libllama.so`, and ggml loads the best one
this CPU can run. ggml looks for them next to the executable and in the working directory,
neither of which is llama-cpp-python's `lib/`, so `load_backends()` names the directory
before the first `llama_backend_init()` (which would otherwise find no backend at all).

A build with one CPU backend linked in (pip's default) reports the variant "built-in".

`python -m llmd.cpu` prints what this machine gets, as JSON: the daemon runs it in a child
process at start (`probe`), so a CPU that cannot run llama.cpp (SIGILL) stops start-up with
one clear line instead of every model process dying, and the variant is reported by
/api/v1/health, the systemd status line and the start log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

BUILT_IN = "built-in"
"""The variant name of a build with one CPU backend linked into libggml."""

PROBE_TIMEOUT_S = 60.0

_VARIANT = re.compile(r"/libggml-cpu(?:-([A-Za-z0-9_.]+))?\.so(?:\.[0-9.]+)?$")


@dataclass(frozen=True)
class CpuBackend:
    """The CPU backend llama.cpp runs on this machine."""

    variant: str
    """ggml's name for it ("haswell", "sse42", ...), or BUILT_IN."""
    features: list[str] = field(default_factory=list)
    """What that build uses, as ggml lists them ("AVX2", "FMA", "OPENMP", ...)."""

    def describe(self) -> str:
        shown = [f for f in self.features if f not in ("OPENMP", "REPACK", "LLAMAFILE")]
        return f"{self.variant} ({' '.join(shown)})" if shown else self.variant


class ProbeFailed(Exception):
    """llama.cpp's CPU backend cannot run here; the message is the journal's one line."""


_current: CpuBackend | None = None


def current() -> CpuBackend | None:
    """What the start-up probe found in this process, or None (not probed)."""
    return _current


def remember(backend: CpuBackend | None) -> None:
    global _current
    _current = backend


def lib_dir() -> Path | None:
    """llama-cpp-python's `lib/` (its shared libraries), found without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def variants(directory: Path) -> list[str]:
    """The CPU backend variants installed in `directory` (empty for a one-backend build)."""
    found = [_VARIANT.search(f"/{p.name}") for p in directory.glob("libggml-cpu-*.so")]
    return sorted(m[1] for m in found if m and m[1])


def libggml(directory: Path) -> Path:
    """The libggml that libllama is linked with: its SONAME file (libggml.so.0), found through
    libllama's RPATH. A wheel cannot hold symlinks, so pip installs libggml.so, .so.0 and
    .so.0.25.3 as three copies: loading another one than libllama's would register the CPU
    backend in a registry libllama never sees ("no backends are loaded")."""
    sonames = sorted(
        p for p in directory.glob("libggml.so.*") if re.fullmatch(r"libggml\.so\.\d+", p.name)
    )
    return sonames[0] if sonames else directory / "libggml.so"


def variant_in_maps(maps: str) -> str | None:
    """The CPU backend mapped into a process, from its /proc/PID/maps text: ggml closes the
    variants it only scored, so the one left is the one it chose."""
    for line in maps.splitlines():
        if match := _VARIANT.search(line.rstrip()):
            return match[1] or BUILT_IN
    return None


def load_backends(directory: Path | None = None) -> None:
    """Load the best CPU backend variant, if this is a build with variants. Call it in the
    process that runs llama.cpp, after importing llama_cpp and before llama_backend_init()."""
    directory = directory or lib_dir()
    if directory is None or not variants(directory):
        return  # one backend linked into libggml: nothing to load
    ggml = ctypes.CDLL(str(libggml(directory)))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count():
        return  # loaded already (a second model in this process, or the quantizer)
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path(str(directory).encode())


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def _features(ggml: ctypes.CDLL) -> list[str]:
    """The CPU backend's own list of what it was built with (ggml_backend_get_features)."""
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    reg = ggml.ggml_backend_reg_by_name(b"CPU")
    if not reg:
        return []
    address = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
    if not address:
        return []
    get = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(address)
    listed, out = get(reg), []
    for i in range(64):
        if not listed[i].name:
            break
        if listed[i].value not in (b"0", b""):
            out.append(listed[i].name.decode())
    return out


def inspect() -> CpuBackend:
    """Load llama.cpp's CPU backend in this process and say which one it is. Run it in a
    child process (`python -m llmd.cpu`): on a CPU it cannot run, this dies with SIGILL."""
    directory = lib_dir()
    if directory is None:
        raise ProbeFailed("llama-cpp-python is not installed")
    ggml = ctypes.CDLL(str(libggml(directory)))
    load_backends(directory)
    maps = Path("/proc/self/maps").read_text()
    return CpuBackend(variant_in_maps(maps) or "none", _features(ggml))


def parse(stdout: bytes) -> CpuBackend:
    data = json.loads(stdout)
    return CpuBackend(str(data["variant"]), [str(f) for f in data["features"]])


def explain(returncode: int, stderr: bytes) -> str:
    """The journal's line for a probe that failed."""
    if returncode == -signal.SIGILL:
        return (
            "llama.cpp cannot run on this CPU: its CPU backend died with SIGILL (an "
            "instruction this processor lacks); llmd needs an x86-64-v2 CPU (SSE4.2, POPCNT)"
        )
    if returncode < 0:
        return f"llama.cpp's CPU backend probe died with {signal.Signals(-returncode).name}"
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return f"llama.cpp's CPU backend probe failed (exit {returncode}): {last[0]}"


async def probe(python: str = sys.executable) -> CpuBackend:
    """Run `python -m llmd.cpu` and remember what it found; ProbeFailed when it cannot run."""
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "llmd.cpu",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ProbeFailed(
            f"llama.cpp's CPU backend probe did not answer in {PROBE_TIMEOUT_S:.0f} s"
        ) from None
    if proc.returncode != 0:
        raise ProbeFailed(explain(proc.returncode or 0, err))
    backend = parse(out)
    remember(backend)
    return backend


def main() -> int:
    try:
        backend = inspect()
    except ProbeFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps({"variant": backend.variant, "features": backend.features}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
