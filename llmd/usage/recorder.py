"""From finished requests to usage rows, and the audit log's entry point.

`UsageRecorder.observe` is a request observer (`app[OBSERVERS]`): it queues one row per
request for the writer thread. A response must not reach the client before its row is
committed (a SIGKILL right after a response must lose nothing), so:
- a plain body: `on_prepare` (aiohttp calls it before sending the body, after the observers
  ran) waits for the commit, typically well under a millisecond;
- a stream: serving calls `llmd.record.finish_stream` before the final `[DONE]`, and
  `finish` writes the row then, so the client sees the end only once the row is committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from llmd.record import RequestRecord, find_record
from llmd.usage.store import UsageStore, audit_row

log = logging.getLogger("llmd.usage")
audit_log = logging.getLogger("llmd.audit")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class UsageRecorder:
    def __init__(self, store: UsageStore, skip_paths: set[str]) -> None:
        self.store = store
        self.skip_paths = skip_paths
        self._uncommitted: dict[int, asyncio.Future[None]] = {}
        self._written_early: set[int] = set()

    def _row(self, record: RequestRecord) -> tuple[Any, ...]:
        return (
            record.started_wall,
            record.request_id,
            record.key_name,
            record.model,
            record.endpoint,
            record.status,
            record.error_code,
            int(record.stream),
            record.prompt_tokens,
            record.cached_tokens,
            record.completion_tokens,
            _ms(record.ttft_s),
            _ms(record.latency_s),
            record.client,
            record.cache,
        )

    def _content(self, record: RequestRecord) -> tuple[Any, ...] | None:
        if record.prompt_text is None and record.answer_parts is None:
            return None
        answer = "".join(record.answer_parts) if record.answer_parts is not None else None
        return (record.request_id, record.started_wall, record.key_name, record.prompt_text, answer)

    def observe(self, record: RequestRecord) -> None:
        if record.path in self.skip_paths:
            return
        if id(record) in self._written_early:
            self._written_early.discard(id(record))
            return
        if (content := self._content(record)) is not None:
            self.store.put("content", content)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        key = id(record)
        self._uncommitted[key] = fut

        def done() -> None:
            loop.call_soon_threadsafe(self._committed, key, fut)

        self.store.put("usage", self._row(record), done)

    def _committed(self, key: int, fut: asyncio.Future[None]) -> None:
        if self._uncommitted.get(key) is fut:
            del self._uncommitted[key]
        if not fut.done():
            fut.set_result(None)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """A plain body goes out only once its record is committed."""
        record = find_record(request)
        if record is not None and (fut := self._uncommitted.get(id(record))) is not None:
            await fut

    async def finish(self, request: web.Request, record: RequestRecord) -> None:
        """A stream's content is complete: commit its record before the final bytes go out."""
        if record.path in self.skip_paths or id(record) in self._written_early:
            return
        self._written_early.add(id(record))
        if (content := self._content(record)) is not None:
            self.store.put("content", content)
        await self.store.put_and_wait("usage", self._row(record))


class Audit:
    """The append-only audit log: who did what to what, from where.

    `record` is cheap and never blocks: the entry is queued for the writer thread (and logged).
    Call it for every admin action: keys, models loaded/unloaded/swapped, config reloaded.
    """

    def __init__(self, store: UsageStore | None) -> None:
        self.store = store

    def record(
        self,
        actor: str,
        action: str,
        target: str | None,
        client: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        audit_log.info(
            "actor=%s action=%s target=%s client=%s", actor, action, target or "-", client or "-"
        )
        if self.store is not None:
            self.store.put("audit", audit_row(actor, action, target, client, detail))

    def record_request(
        self,
        request: web.Request,
        action: str,
        target: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """The same, with the actor (key name, or `local` without auth) and client address
        taken from an HTTP request."""
        self.record(actor_of(request), action, target, request.remote, detail)


def actor_of(request: web.Request) -> str:
    record = find_record(request)
    name = record.key_name if record is not None else None
    return f"key:{name}" if name else "local"


AUDIT = web.AppKey("audit", Audit)
"""`request.app[AUDIT].record(...)`: how other parts (model admin, config reload) audit."""
