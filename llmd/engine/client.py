"""The daemon's side of a model process: spawn it, talk to it, restart it when it dies.

A crash (segfault, abort, OOM kill) or a hang inside llama.cpp ends only the child: the
daemon answers that model's in-flight requests with a 503, and starts a new child after a
pause that grows with repeated failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmd.engine import messages as m
from llmd.engine.messages import LoadOptions
from llmd.errors import APIError, InvalidRequest, ServiceUnavailable

log = logging.getLogger("llmd.engine")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class RequestHandle:
    """A submitted request: its engine events arrive on `queue`."""

    id: str
    n: int
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    finished: int = 0
    """Choices that ended, counted as their final events arrive from the engine."""
    count_only: bool = False
    """The request only counts its prompt: `Started` is its last event."""

    async def events(self) -> AsyncIterator[Any]:
        """Engine events until the request ends; a failure is raised as an APIError."""
        ended = 0
        while ended < self.n:
            event = await self.queue.get()
            if isinstance(event, m.Failed):
                cls = InvalidRequest if event.status == 400 else APIError
                raise cls(event.message, code=event.code, param=event.param, status=event.status)
            if self.count_only and isinstance(event, m.Started):
                yield event
                return
            if isinstance(event, m.Embedding) or (
                isinstance(event, m.Delta) and event.finish_reason is not None
            ):
                ended += 1
            yield event


@dataclass
class EngineOptions:
    load: LoadOptions
    omp_wait_policy: str
    omp_spin_count: int
    log_level: str
    max_queue: int
    load_timeout_s: float
    hang_timeout_s: float
    restart_backoff_max_s: float


def check_admission(
    name: str,
    state: ModelState,
    error: str | None,
    options: EngineOptions,
    num_held: int,
    req: m.GenerateRequest,
    connected: bool = True,
) -> None:
    """The daemon's side of admission: the model process is ready and its bounded queue has
    room for the request's `n` sequences (beside the `num_held` it runs or queues already),
    or a 503 now (`Retry-After`), never a wait. tests/unit/fake_process.py refuses with it
    too, so the in-process tests meet exactly these answers. `connected`: the pipe to the
    process is open (a process is served only through it)."""
    if state != ModelState.READY or not connected:
        reason = f": {error}" if error else ""
        raise ServiceUnavailable(
            f"model '{name}' is {state.value}{reason}", code="model_not_ready", retry_after=2
        )
    capacity = options.load.parallel + options.max_queue
    if req.n > capacity:  # would be refused however long the client retried
        raise InvalidRequest(
            f"n must be at most {capacity} for model '{name}' (its slots and queue)", param="n"
        )
    if num_held + req.n > capacity:
        raise ServiceUnavailable(
            f"model '{name}' is busy: {num_held} sequences running or queued, "
            f"limit {capacity}; retry shortly",
            code="server_busy",
        )


class ModelProcess:
    def __init__(self, name: str, options: EngineOptions, retry_failed_load: bool = True) -> None:
        self.name = name
        self.options = options
        # A file that never loaded (corrupt, unsupported) will not load on a retry either:
        # the manager reports it failed and tries again only when the file changes.
        self.retry_failed_load = retry_failed_load
        self.state = ModelState.STOPPED
        self.error: str | None = None
        self.info: m.Ready | None = None
        self.stats: m.Stats | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.loaded_at: float | None = None
        self._inflight: dict[str, RequestHandle] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor; returns once the model is ready or has failed to load."""
        self._stopping = False
        self._ready.clear()
        self._task = asyncio.create_task(self._supervise(), name=f"model:{self.name}")
        await self._ready.wait()

    async def stop(self) -> None:
        self._stopping = True
        self._fail_all("the daemon is shutting down")
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(m.pack(m.Shutdown()))
                await self._writer.drain()
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = ModelState.STOPPED

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except Exception as exc:  # noqa: BLE001 - any failure means: restart the child
                if self._stopping:
                    break
                self.error = str(exc) or type(exc).__name__
                log.error("model %s: %s", self.name, self.error)
            finally:
                self._writer = None
                self.pid = None
                self.info = None
                if self._proc is not None and self._proc.returncode is None:
                    self._proc.kill()
                    await self._proc.wait()
            if self._stopping:
                break
            self._fail_all(f"model '{self.name}' stopped unexpectedly and is restarting")
            self.state = ModelState.RESTARTING if self.loaded_at else ModelState.FAILED
            self._ready.set()
            if not self.loaded_at and not self.retry_failed_load:
                break
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.restarts += 1
            log.warning("model %s: restarting in %.0f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.options.restart_backoff_max_s)

    async def _run_once(self) -> None:
        self.state = ModelState.LOADING if self.loaded_at is None else ModelState.RESTARTING
        self._proc, parent = await _spares(self.options).take()
        self.pid = self._proc.pid
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        try:
            await self._serve(reader, writer)
        finally:
            # A long-lived daemon loads and unloads models for months: never leak the socket.
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._proc is not None
        writer.write(m.pack(m.Load(self.name, self.options.load)))
        await writer.drain()
        first = await asyncio.wait_for(_read(reader), self.options.load_timeout_s)
        if isinstance(first, m.Failed):
            raise RuntimeError(first.message)
        assert isinstance(first, m.Ready)
        self.info = first
        self.error = None
        self.loaded_at = time.time()
        self._writer = writer
        self.state = ModelState.READY
        self._ready.set()
        _spares(self.options).prepare()
        log.info("model %s: ready (pid %d)", self.name, self.pid)
        while True:
            try:
                msg = await asyncio.wait_for(_read(reader), self.options.hang_timeout_s)
            except TimeoutError:
                raise RuntimeError(
                    f"no answer for {self.options.hang_timeout_s:.0f} s: hung, killed"
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError):
                code = await self._proc.wait()
                raise RuntimeError(f"model process exited with status {code}") from None
            if isinstance(msg, m.Batch):
                self.stats = msg.stats
                for event in msg.events:
                    self._dispatch(event)

    # -- requests --------------------------------------------------------------------------

    def submit(self, req: m.GenerateRequest) -> RequestHandle:
        held = sum(h.n for h in self._inflight.values())
        connected = self._writer is not None
        check_admission(self.name, self.state, self.error, self.options, held, req, connected)
        assert self._writer is not None  # refused above otherwise
        handle = RequestHandle(req.id, req.n, count_only=req.count_only)
        self._inflight[req.id] = handle
        self._writer.write(m.pack(req))
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        """Free a request's sequences now if it is still running (the client went away)."""
        if self._inflight.pop(handle.id, None) is not None and self._writer is not None:
            self._writer.write(m.pack(m.Cancel(handle.id)))

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    def _dispatch(self, event: Any) -> None:
        handle = self._inflight.get(event.id)
        if handle is None:
            return  # cancelled while the event was on its way
        handle.queue.put_nowait(event)
        counted = handle.count_only and isinstance(event, m.Started)
        if counted or isinstance(event, (m.Failed, m.Embedding)):
            self._inflight.pop(event.id, None)
        elif isinstance(event, m.Delta) and event.finish_reason is not None:
            handle.finished += 1
            if handle.finished >= handle.n:
                self._inflight.pop(event.id, None)

    def _fail_all(self, reason: str) -> None:
        for handle in self._inflight.values():
            handle.queue.put_nowait(m.Failed(handle.id, 503, reason, code="model_crashed"))
        self._inflight.clear()


Spawned = tuple[asyncio.subprocess.Process, socket.socket]


class SpareProcess:
    """One model process started ahead of time, Python and llama.cpp imported, waiting to
    be told which model to load: a model loaded on demand skips that start-up (~0.5-1 s).

    Costs one idle Python process (~40 MB). The replacement starts only once the model that
    took the spare is ready: started at once, its imports would compete with that load.
    """

    def __init__(self, omp_wait_policy: str, omp_spin_count: int, log_level: str) -> None:
        self.omp_wait_policy = omp_wait_policy
        self.omp_spin_count = omp_spin_count
        self.log_level = log_level
        self._next: asyncio.Task[Spawned] | None = None

    def prepare(self) -> None:
        """Start the spare now if none is waiting."""
        if self._next is None:
            self._next = asyncio.create_task(self._spawn())

    async def take(self) -> Spawned:
        task, self._next = self._next, None
        if task is not None:
            try:
                proc, sock = await task
            except Exception:  # noqa: BLE001 - the spare could not start: start one now
                pass
            else:
                if proc.returncode is None:
                    return proc, sock
                sock.close()
        return await self._spawn()

    async def _spawn(self) -> Spawned:
        parent, child = socket.socketpair()
        env = omp_env(os.environ, self.omp_wait_policy, self.omp_spin_count)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "llmd.engine.worker",
                "--fd",
                str(child.fileno()),
                "--log-level",
                self.log_level,
                pass_fds=(child.fileno(),),
                env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return proc, parent

    async def close(self) -> None:
        task, self._next = self._next, None
        if task is None:
            return
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return
        with contextlib.suppress(BaseException):
            proc, sock = task.result()
            sock.close()  # the spare reads end-of-file and exits
            await asyncio.wait_for(proc.wait(), 10)


_SPARES: dict[tuple[str, int, str], SpareProcess] = {}


def omp_env(base: Mapping[str, str], policy: str, spin_count: int) -> dict[str, str]:
    """`base` with the OpenMP wait settings of a model process. A passive thread spins
    `spin_count` times at a barrier before it sleeps: GOMP_SPINCOUNT overrides the policy's
    own count (0 for passive) in libgomp, which the llama.cpp wheel's threads run on. Active
    keeps libgomp's own (spin for minutes), so an inherited count is dropped."""
    env = dict(base, OMP_WAIT_POLICY=policy.upper())
    env.pop("GOMP_SPINCOUNT", None)
    if policy == "passive":
        env["GOMP_SPINCOUNT"] = str(spin_count)
    return env


def prepare_spare(options: EngineOptions) -> None:
    """Have a model process ready ahead for the next load of a model with these options."""
    _spares(options).prepare()


def _spares(options: EngineOptions) -> SpareProcess:
    key = (options.omp_wait_policy, options.omp_spin_count, options.log_level)
    if key not in _SPARES:
        _SPARES[key] = SpareProcess(*key)
    return _SPARES[key]


async def close_spares() -> None:
    """End the processes kept ahead (at shutdown)."""
    spares = list(_SPARES.values())
    _SPARES.clear()
    for spare in spares:
        await spare.close()


async def _read(reader: asyncio.StreamReader) -> Any:
    size = m.unpack_header(await reader.readexactly(m.HEADER_SIZE))
    return m.unpack(await reader.readexactly(size))
