"""A fake model process for unit tests: the contract of `llmd.engine.client.ModelProcess`
(`llmd.models.Process`) without a process, llama.cpp or a model.

Use it to run the model manager, the serving layer or the auth checks in-process:

    processes = FakeProcesses(tokens=["Hello", ",", " world"])
    processes.configure("big", rss=900 * MiB)        # per model name
    processes.configure("broken", fail_load="not a model")
    manager = ModelManager(settings, processes, read_rss=processes.read_rss)

The manager then makes a `FakeProcess` wherever it would start a real one (the entries still
come from real GGUF files: `write_models` writes tiny ones). What a `FakeProcess` does:

- `start()` "loads" (after `load_delay` seconds): READY with a made-up pid and an `info`
  (`m.Ready`) saying what a small llama-like model with a ChatML template would, or FAILED
  with `error` when `fail_load` is set.
- `submit(req)` returns a real `RequestHandle` whose `events()` yield, as the engine's do:
  `m.Started` (prompt tokens: the prompt's token ids, or its words), `m.Admitted`, then per
  choice one `m.Delta` per token of `tokens` (at most max_tokens; the last carries
  finish_reason "stop", or "length" when max_tokens cut it short); an embed request gets
  `m.Embedding` instead, a `count_only` one `m.Started` alone. It refuses like the real one:
  model_not_ready when not ready, server_busy beyond parallel + max_queue sequences.
- `gate` (an asyncio.Event, open by default) holds every request after `m.Admitted` while it
  is clear: a way to keep requests running (busy model, saturation, draining).
- `cancel(handle)`, `stop()` (fails what is in flight, as the real one does), `crash()`
  (RESTARTING, in-flight requests fail with model_crashed), `stats` (running = sequences in
  flight), `num_inflight`; counters `starts`, `stops` and the list `submitted`.
- The resident memory is `rss` (bytes), read through `FakeProcesses.read_rss` by pid.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmd.engine import messages as m
from llmd.engine.client import EngineOptions, ModelState, RequestHandle, check_admission
from tests import tinybert

MiB = 1024 * 1024
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_PIDS = itertools.count(10_000_000)  # above any real pid (pid_max is at most 2**22)


class FakeProcess:
    """One fake model process (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        options: EngineOptions,
        *,
        tokens: Sequence[str] = ("Hello", ",", " world", "!"),
        rss: int = 100 * MiB,
        fail_load: str | None = None,
        load_delay: float = 0.0,
        token_delay: float = 0.0,
        n_embd: int = 8,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.state = ModelState.STOPPED
        self.error: str | None = None
        self.info: m.Ready | None = None
        self.stats: m.Stats | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.loaded_at: float | None = None
        self.tokens = list(tokens)
        self.rss = rss
        self.fail_load = fail_load
        self.load_delay = load_delay
        self.token_delay = token_delay
        self.n_embd = n_embd
        self.metadata = metadata or {
            "general.architecture": "llama",
            "tokenizer.chat_template": CHATML,
        }
        self.gate = asyncio.Event()
        self.gate.set()
        self.starts = 0
        self.stops = 0
        self.submitted: list[m.GenerateRequest] = []
        self._inflight: dict[str, RequestHandle] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._steps = 0
        self._decoded = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.starts += 1
        self.state = ModelState.LOADING
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if self.fail_load is not None:
            self.state, self.error = ModelState.FAILED, self.fail_load
            return
        load = self.options.load
        self.pid = next(_PIDS)
        self.info = m.Ready(
            metadata=self.metadata,
            n_ctx_train=8192,
            ctx_per_seq=load.ctx_per_seq,
            parallel=load.parallel,
            n_vocab=1000,
            bos_token="<s>",
            eos_token="<|im_end|>",
            model_bytes=self.rss // 2,
            n_embd=self.n_embd,
        )
        self.error = None
        self.loaded_at = time.time()
        self.state = ModelState.READY
        self._report()

    async def stop(self) -> None:
        self.stops += 1
        self._fail_all("the daemon is shutting down")
        self.state = ModelState.STOPPED
        self.pid = None
        self.info = None

    def crash(self, reason: str = "model process exited with status -11") -> None:
        """As a crash of the real process: in-flight requests fail, it restarts."""
        self.error = reason
        self.restarts += 1
        self._fail_all(f"model '{self.name}' stopped unexpectedly and is restarting")
        self.state = ModelState.RESTARTING
        self.pid = None
        self.info = None

    # -- requests --------------------------------------------------------------------------

    def submit(self, req: m.GenerateRequest) -> RequestHandle:
        held = sum(h.n for h in self._inflight.values())
        check_admission(self.name, self.state, self.error, self.options, held, req)
        self.submitted.append(req)
        handle = RequestHandle(req.id, req.n, count_only=req.count_only)
        self._inflight[req.id] = handle
        self._tasks[req.id] = asyncio.create_task(self._run(req))
        self._report()
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        self._inflight.pop(handle.id, None)
        task = self._tasks.pop(handle.id, None)
        if task is not None:
            task.cancel()
        self._report()

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    async def _run(self, req: m.GenerateRequest) -> None:
        prompt = req.prompt if isinstance(req.prompt, list) else req.prompt.split()
        if req.count_only:
            self._emit(m.Started(req.id, len(prompt), 0))
            self._inflight.pop(req.id, None)
            self._tasks.pop(req.id, None)
            return
        limit = req.sampling.max_tokens if req.sampling.max_tokens is not None else len(self.tokens)
        self._emit(m.Started(req.id, len(prompt), 0 if req.embed else limit))
        self._emit(m.Admitted(req.id, 0))
        await self.gate.wait()
        if req.embed:
            unit = (1.0 / self.n_embd) ** 0.5
            self._emit(m.Embedding(req.id, struct.pack(f"<{self.n_embd}f", *[unit] * self.n_embd)))
            return
        out = self.tokens[:limit]
        finish = "length" if limit < len(self.tokens) else "stop"
        for index in range(req.n):
            if not out:
                self._emit(m.Delta(req.id, index, "", 0, None, finish))
            for i, text in enumerate(out):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                self._decoded += 1
                last = i == len(out) - 1
                self._emit(m.Delta(req.id, index, text, 1, None, finish if last else None))

    def _emit(self, event: Any) -> None:
        handle = self._inflight.get(event.id)
        if handle is None:
            return  # cancelled
        handle.queue.put_nowait(event)
        ended = isinstance(event, m.Embedding) or (
            isinstance(event, m.Delta) and event.finish_reason is not None
        )
        if ended:
            handle.finished += 1
            if handle.finished >= handle.n:
                self._inflight.pop(event.id, None)
                self._tasks.pop(event.id, None)
        self._steps += 1
        self._report()

    def _fail_all(self, reason: str) -> None:
        for handle in self._inflight.values():
            handle.queue.put_nowait(m.Failed(handle.id, 503, reason, code="model_crashed"))
        for task in self._tasks.values():
            task.cancel()
        self._inflight.clear()
        self._tasks.clear()
        self._report()

    def _report(self) -> None:
        running = sum(h.n - h.finished for h in self._inflight.values())
        total = self.options.load.ctx_per_seq * self.options.load.parallel
        self.stats = m.Stats(running, 0, running, total, self._steps, self._decoded)


class FakeProcesses:
    """A `process_factory` for `ModelManager` that makes `FakeProcess`es and keeps them.

    Keyword arguments are `FakeProcess` options for every model; `configure(name, ...)`
    sets them for one model (for the processes made from then on)."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.per_model: dict[str, dict[str, Any]] = {}
        self.made: list[FakeProcess] = []

    def configure(self, name: str, **options: Any) -> None:
        self.per_model.setdefault(name, {}).update(options)

    def __call__(self, name: str, options: EngineOptions) -> FakeProcess:
        process = FakeProcess(name, options, **{**self.defaults, **self.per_model.get(name, {})})
        self.made.append(process)
        return process

    def of(self, name: str) -> list[FakeProcess]:
        """Every process made for the model `name`, oldest first."""
        return [p for p in self.made if p.name == name]

    def read_rss(self, pid: int | None) -> int | None:
        """The `read_rss` to give the manager: a live fake process's `rss`."""
        for process in self.made:
            if pid is not None and process.pid == pid:
                return process.rss
        return None


def write_models(directory: Path, *names: str) -> Path:
    """Tiny real GGUF files `<name>.gguf` in `directory` (made if need be), for the catalogue
    to find; their estimate is about 57 MB each (the fixed part of a model process)."""
    directory.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        tinybert.write(directory / f"{name}.gguf", seed=seed)
    return directory


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (on the event loop) until `predicate()` holds; fail the test after `timeout` s."""
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for: {what}")
