"""The parser process: large request bodies parsed and validated off the event loop.

Neither the JSON decoder nor pydantic lets go of the GIL, so a thread would not spare the
event loop, which writes every stream's tokens. The daemon hands a large body's bytes to this
process (`python -m llmd.parser_process`, started at the first such body) and takes back the
validated request. A call is a function and its arguments, pickled, framed by an 8-byte
length on the child's stdin; the answer, ("ok", value) or ("error", exception), framed the
same way on its stdout. One call at a time, at a lower priority (`NICENESS`): large bodies
are rare, and on a small box parsing them must not take a core from the model's decoding,
which other clients' streams wait on (back-to-back 30 MB bodies on 2 cores took their
inter-token p99 to 2.8x at the same priority; docs/benchmarks.md). It runs only the daemon's
own functions on bodies the daemon already read; no client bytes are unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from llmd.errors import ServiceUnavailable

log = logging.getLogger("llmd.parser")
T = TypeVar("T")
_HEADER = 8
NICENESS = 10
"""Added to the process's nice value: under CPU contention it gets about a tenth of a core's
share against the model's threads, and all of an idle core."""


class ParserProcess:
    """The daemon's side: `await parser.run(fn, *args)` is `fn(*args)` in the process."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        # Shielded: a client that leaves mid-call must not leave the process's answer to be
        # read as the next call's, so the exchange runs to its end whoever awaits it.
        data = await asyncio.shield(asyncio.ensure_future(self._exchange(payload)))
        status, value = pickle.loads(data)
        if status == "error":
            raise value
        return value  # type: ignore[no-any-return]

    async def _exchange(self, payload: bytes) -> bytes:
        async with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                proc = self._proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "llmd.parser_process",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(len(payload).to_bytes(_HEADER, "big") + payload)
                await proc.stdin.drain()
                size = int.from_bytes(await proc.stdout.readexactly(_HEADER), "big")
                return await proc.stdout.readexactly(size)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                log.warning(
                    "the parser process ended (%s); the next large body starts another",
                    type(exc).__name__,
                )
                await self._end(proc)
                raise ServiceUnavailable(
                    "The request body could not be parsed: the parser process ended. Please retry.",
                    retry_after=1,
                ) from None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def close(self) -> None:
        """Ends the process, after the call it is answering."""
        async with self._lock:
            if self._proc is not None:
                await self._end(self._proc)

    async def _end(self, proc: asyncio.subprocess.Process) -> None:
        if self._proc is proc:
            self._proc = None
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The process's side: calls answered one at a time until stdin ends."""
    while len(header := stdin.read(_HEADER)) == _HEADER:
        fn, args = pickle.loads(stdin.read(int.from_bytes(header, "big")))
        try:
            answer: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            answer = ("error", exc)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an answer that cannot be pickled
            data = pickle.dumps(("error", RuntimeError(f"unpicklable answer: {exc!r}")))
        stdout.write(len(data).to_bytes(_HEADER, "big") + data)
        stdout.flush()


if __name__ == "__main__":
    os.nice(NICENESS)
    serve(sys.stdin.buffer, sys.stdout.buffer)
