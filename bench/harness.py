"""The contenders of a benchmark: their servers started, watched and stopped.

Every contender runs on the same model file, thread counts and OpenMP policy (`Setup`):
- llmd: the real daemon (bench.daemon.start_daemon);
- llama-server: llama.cpp's own server, `-np PARALLEL`;
- llama-cpp-python: its bundled server, in its own virtualenv;
- serial: llama-server with one slot (one request at a time on llama.cpp's own loop).
A contender's turn (`take_turn`) runs on a server started for it alone, stopped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TypeVar

import psutil

from bench.daemon import GEMMA, MODELS, ROOT, SMOL, Daemon, free_port, spawn, start_daemon
from llmd.settings import EngineSettings

NAMED_MODELS = {"smollm2": MODELS / SMOL, "gemma3": MODELS / GEMMA}
CONTENDERS = ("llmd", "llama-server", "llama-cpp-python", "serial")
DEFAULT_CONTENDERS = ("llmd", "llama-server", "llama-cpp-python")
# Contenders that serve one request at a time: their throughput is flat by construction and
# their TTFT grows linearly with the queue, so the sweep runs them at fewer levels.
SERIAL = frozenset({"llama-cpp-python", "serial"})
PEERS = ("llmd", "llama-server")
"""The two sides of a comparison with llama-server alone (bench.embed, bench.structured)."""
PEER_BIN = Path.home() / ".cache" / "llmd-bench" / "llama.cpp-0.3.36" / "bin"
START_SECONDS = 300  # a contender's server, model load included, on a busy 2-core box


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def omp_policy() -> str:
    """The OpenMP wait policy every contender runs under: the caller's, else llmd's own
    defaults (PASSIVE, spinning `engine.omp_spin_count` at a barrier before sleeping). Set in
    this process's environment, which every server, llama-bench and in-process engine run
    inherits, before anything starts llama.cpp; llmd's config gets the same (`_llmd_config`)."""
    policy = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if policy.upper() != "PASSIVE":
        return policy
    spin = os.environ.setdefault("GOMP_SPINCOUNT", str(EngineSettings().omp_spin_count))
    return f"{policy} (GOMP_SPINCOUNT={spin})"


def _rss_tree(proc: psutil.Process) -> int:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class MemoryWatch:
    """Samples the RSS of a process tree in a thread; `peak()` since the last `reset()`."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_tree(self.proc))

    def now(self) -> int:
        return _rss_tree(self.proc)

    def reset(self) -> None:
        self._peak = self.now()

    def peak(self) -> int:
        return max(self._peak, self.now())

    def stop(self) -> None:
        self._stop.set()


class Server:
    """A contender's server, started and answering `ready`, watched for memory."""

    def __init__(self, label: str, daemon: Daemon, ready: str) -> None:
        self.label = label
        self.model = "bench"  # every contender serves the model under this name
        self.daemon = daemon
        self.argv = daemon.argv
        daemon.wait_for(ready, START_SECONDS)
        self.memory = MemoryWatch(daemon.proc.pid)

    @property
    def url(self) -> str:
        return self.daemon.url + "/v1"

    def stop(self) -> None:
        self.memory.stop()
        # A server that ignores SIGTERM is killed; the benchmark goes on.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemon.stop()


@dataclass
class Setup:
    """What every contender is started with (same model, threads, OpenMP policy)."""

    model: Path
    threads: int
    threads_batch: int
    ctx: int
    parallel: int
    max_queue: int
    work: Path
    llama_server: Path | None
    lcp_python: Path | None


def _llmd_config(s: Setup, extra_toml: str = "") -> str:
    """llmd's config for `s`; the lines of `extra_toml` before its first table header are
    keys of `[engine]` (e.g. `flash_attn = "off"`), the rest is appended as it is."""
    head, tables = extra_toml, ""
    if (at := extra_toml.find("[")) >= 0 and (at == 0 or extra_toml[at - 1] == "\n"):
        head, tables = extra_toml[:at], extra_toml[at:]
    models_dir = s.work / "models"  # empty, of its own: the one model is the table below
    models_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f'models_dir = "{models_dir}"',
        "[server]",
        f"max_queue = {s.max_queue}",
        "[engine]",
        f"ctx_per_seq = {s.ctx}",
        f"parallel = {s.parallel}",
        f"threads = {s.threads}",
        f"threads_batch = {s.threads_batch}",
        f'omp_wait_policy = "{os.environ["OMP_WAIT_POLICY"].lower()}"',
        f"omp_spin_count = {os.environ.get('GOMP_SPINCOUNT', 0)}",
        *head.splitlines(),
        "[models.bench]",
        f'path = "{s.model.resolve()}"',
    ]
    return "\n".join(lines) + "\n" + tables


def _peer(label: str, argv: list[str], port: int, ready: str, s: Setup) -> Server:
    daemon = spawn(argv, port, s.work / f"{label}.log", ROOT, label)
    return Server(label, daemon, ready)


def start(
    label: str, s: Setup, llama_server_flags: Sequence[str] = (), llmd_toml: str = ""
) -> Server:
    """Contender `label`'s server on a free port, answering; `llama_server_flags` are added to
    llama-server's command line (e.g. `--embeddings`), `llmd_toml` to the end of llmd's config
    (e.g. an `[engine.speculative]` table)."""
    omp_policy()
    model = str(s.model.resolve())
    if label == "llmd":
        daemon = start_daemon(s.work / "llmd", _llmd_config(s, llmd_toml), None)
        daemon.name = label
        return Server(label, daemon, "/ready")
    port = free_port()
    if label in ("llama-server", "serial"):
        if s.llama_server is None:
            raise RuntimeError("llama-server was not built (scripts/bench builds it)")
        slots = s.parallel if label == "llama-server" else 1
        argv = [
            str(s.llama_server), "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-t", str(s.threads), "-tb", str(s.threads_batch), "-np", str(slots),
            "-c", str(s.ctx * slots), "-a", "bench", "--no-webui", *llama_server_flags,
        ]  # fmt: skip
        return _peer(label, argv, port, "/health", s)
    if label == "llama-cpp-python":
        if s.lcp_python is None:
            raise RuntimeError("no llama-cpp-python[server] venv (scripts/bench makes it)")
        argv = [
            str(s.lcp_python), "-m", "llama_cpp.server", "--model", model,
            "--port", str(port), "--n_ctx", str(s.ctx), "--n_threads", str(s.threads),
            "--n_threads_batch", str(s.threads_batch), "--model_alias", "bench",
            # Left at its default (True), a new request interrupts the running stream: the
            # concurrent clients are then cut off after a token or two.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        return _peer(label, argv, port, "/v1/models", s)
    raise ValueError(f"unknown contender {label}")


T = TypeVar("T")


def take_turn(server: Server, turn: Callable[[Server], T]) -> T:
    """One contender's turn on a server started for it: the server is stopped afterwards, and
    if the turn failed the end of its log is shown (a crash is told there, not in the error)."""
    try:
        return turn(server)
    except Exception:
        status = server.daemon.proc.poll()
        print(f"{server.label} failed (process: {status}); its log ends:\n{server.daemon.tail()}")
        raise
    finally:
        server.stop()


def binary(folder: str | None, name: str) -> Path | None:
    """A peer's program `name` in `folder`, if built there."""
    if not folder:
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


def lcp_python(venv: str | None) -> Path | None:
    """The python of llama-cpp-python[server]'s virtualenv, if there is one."""
    if not venv:
        return None
    python = Path(venv) / "bin/python"
    return python if python.exists() else None


# -- a comparison with llama-server alone (bench.embed, bench.structured) ---------------------


def model_arg(value: str) -> Path:
    """A model named on the command line: one of NAMED_MODELS (`smollm2`, `gemma3`) or a path."""
    return NAMED_MODELS.get(value, Path(value))


def parse_peer_args(
    prog: str, doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The command line of a comparison with llama-server: model, repeats, its folder,
    threads, where the JSON goes; `extra` adds a script's own options."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    parser.add_argument("--model", type=model_arg, default=NAMED_MODELS["smollm2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bin", type=Path, default=PEER_BIN, help="llama-server's folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-batch", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def peer_setup(args: argparse.Namespace, work: Path, parallel: int = 16) -> Setup:
    return Setup(
        model=args.model,
        threads=args.threads,
        threads_batch=args.threads_batch,
        ctx=2048,
        parallel=parallel,
        max_queue=32,
        work=work,
        llama_server=args.bin / "llama-server",
        lcp_python=None,
    )


def peer_turns(
    args: argparse.Namespace,
    turn: Callable[[int, Server], T],
    parallel: int = 16,
    llama_server_flags: Sequence[str] = (),
) -> Iterator[tuple[int, str, T]]:
    """(repeat, label, what `turn(repeat, server)` gave) for each of `args.repeats` repeats in
    which llmd and llama-server take a turn each, the first place alternating."""
    omp_policy()
    with TemporaryDirectory(prefix="llmd-bench-") as tmp:
        s = peer_setup(args, Path(tmp), parallel)
        for rep in range(args.repeats):
            for label in PEERS if rep % 2 == 0 else PEERS[::-1]:
                server = start(label, s, llama_server_flags)
                yield rep, label, take_turn(server, partial(turn, rep))
