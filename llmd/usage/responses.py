"""Stored Responses (OpenAI's Responses API, `store: true`): what `GET /v1/responses/{id}`,
`.../input_items` and a follow-up's `previous_response_id` read back.

A stored response is one row of the `responses` table in the usage database (the schema is in
store.py), scoped to the key that made it: another key's id, or a key's id asked for without a
key (or the other way round), is "not found", exactly as an unknown id. Rows older than
`usage.responses_retention_days` are never returned and are deleted by the writer's retention
pass; `llmd usage purge` deletes them with the usage records, and revoking a key deletes all of
its stored responses.

Writes go through the usage writer thread (`UsageStore.put_and_wait`): a save returns once the
row is committed, so a follow-up sent the moment the client has the response finds it. Reads
and deletes run in a thread on a connection of their own. JSON is encoded and decoded in a
thread too: a row may be megabytes.

A row is bounded at MAX_STORED_CHARS characters of JSON (body, input items and conversation
together): twice the largest request body the server takes (32 MiB). That holds a request's
whole input as its input items and in the conversation, but not always with a long earlier
conversation and the echoed request beside them: such a follow-up is refused (below) and the
client starts a new conversation. A save over it raises
`ResponseTooLarge` (a 400 naming `store`: send `store: false`).

With usage recording off (`usage.enabled = false`) nothing is written to disk: responses are
kept in memory instead (lost at a restart), at most MEMORY_MAX_CHARS characters of their JSON
(up to 4 bytes each in memory for text outside Latin-1), the oldest dropped first, with the
same key scoping and retention.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from llmd.errors import APIError, InvalidRequest
from llmd.usage.store import UsageStore, connect

MAX_STORED_CHARS = 64 * 1024 * 1024
"""The most characters of JSON one stored response may hold (body, input items and
conversation together)."""
MEMORY_MAX_CHARS = 256 * 1024 * 1024
"""Without a usage database: the most the in-memory store holds (characters of JSON) before
dropping the oldest."""


@dataclass
class StoredResponse:
    id: str
    """"resp_..."."""
    key: str | None
    """The name of the API key that made it (record.key_name; None without keys)."""
    created: float
    """Unix seconds."""
    model: str
    body: dict[str, Any]
    """The Response object exactly as sent to the client."""
    input_items: list[dict[str, Any]]
    """This request's input items (for GET .../input_items), each with an id."""
    conversation: list[dict[str, Any]]
    """What a follow-up continues from: the previous response's conversation, this input and
    this response's output items."""


class ResponseNotFound(APIError):
    """404 in OpenAI's words; the same for an unknown, expired, deleted or another key's id."""

    status = 404
    type = "invalid_request_error"

    def __init__(self, response_id: str, param: str | None = None) -> None:
        super().__init__(f"No response found with id '{response_id}'.", param=param)


class ResponseTooLarge(InvalidRequest):
    def __init__(self, size: int) -> None:
        super().__init__(
            f"This response is too large to store ({size} characters of JSON, at "
            f"most {MAX_STORED_CHARS}). Send 'store': false to get it without storing it.",
            param="store",
            code="response_too_large",
        )


# A row as the database holds it: (id, time, key, model, body, input_items, conversation).
Row = tuple[str, float, str | None, str, str, str, str]


def encode_row(stored: StoredResponse) -> Row:
    """A response as the database holds it; ResponseTooLarge over MAX_STORED_CHARS."""
    body = json.dumps(stored.body, ensure_ascii=False, separators=(",", ":"))
    items = json.dumps(stored.input_items, ensure_ascii=False, separators=(",", ":"))
    conversation = json.dumps(stored.conversation, ensure_ascii=False, separators=(",", ":"))
    size = len(body) + len(items) + len(conversation)
    if size > MAX_STORED_CHARS:
        raise ResponseTooLarge(size)
    return (stored.id, stored.created, stored.key, stored.model, body, items, conversation)


def decode_row(row: Row) -> StoredResponse:
    """A row back into the response it stores."""
    rid, created, key, model, body, items, conversation = row
    return StoredResponse(
        id=rid,
        key=key,
        created=created,
        model=model,
        body=json.loads(body),
        input_items=json.loads(items),
        conversation=json.loads(conversation),
    )


def _size(row: Row) -> int:
    return sum(len(part) for part in row[4:])


class ResponseStore:
    """Stored responses: in the usage database when there is one (`usage`), else in memory."""

    def __init__(
        self,
        usage: UsageStore | None,
        retention_days: float = 30.0,
        clock: Callable[[], float] = time.time,
        memory_max_chars: int = MEMORY_MAX_CHARS,
    ) -> None:
        self.usage = usage
        self.retention_days = retention_days
        self.clock = clock
        self.memory_max_chars = memory_max_chars
        self._memory: OrderedDict[str, Row] = OrderedDict()
        self._memory_chars = 0

    @property
    def persistent(self) -> bool:
        """Whether stored responses outlive the daemon (a usage database)."""
        return self.usage is not None

    def _cutoff(self) -> float:
        return self.clock() - self.retention_days * 86400

    async def save(self, stored: StoredResponse) -> None:
        """Store a response; returns once a follow-up can find it (committed, with a
        database). Raises ResponseTooLarge over MAX_STORED_CHARS."""
        row = await asyncio.to_thread(encode_row, stored)
        if self.usage is not None:
            await self.usage.put_and_wait("responses", row)
            return
        self._forget(stored.id)
        self._memory[stored.id] = row
        self._memory_chars += _size(row)
        while self._memory_chars > self.memory_max_chars and self._memory:
            self._forget(next(iter(self._memory)))

    def _forget(self, response_id: str) -> bool:
        row = self._memory.pop(response_id, None)
        if row is None:
            return False
        self._memory_chars -= _size(row)
        return True

    async def load(self, response_id: str, key: str | None) -> StoredResponse | None:
        """The stored response; None when unknown, expired, deleted or another key's."""
        if self.usage is None:
            row = self._memory.get(response_id)
            if row is None or row[2] != key or row[1] < self._cutoff():
                return None
            return await asyncio.to_thread(decode_row, row)
        return await asyncio.to_thread(load_row, self.usage.path, response_id, key, self._cutoff())

    async def delete(self, response_id: str, key: str | None) -> bool:
        """Delete a stored response; False when there was none this key could see."""
        if self.usage is None:
            row = self._memory.get(response_id)
            if row is None or row[2] != key or row[1] < self._cutoff():
                return False
            return self._forget(response_id)
        return await asyncio.to_thread(
            delete_row, self.usage.path, response_id, key, self._cutoff()
        )

    async def forget_key(self, key: str) -> int:
        """Delete every stored response of a key (it was revoked); how many went."""
        if self.usage is None:
            ids = [rid for rid, row in self._memory.items() if row[2] == key]
            for rid in ids:
                self._forget(rid)
            return len(ids)
        return await asyncio.to_thread(delete_key, self.usage.path, key)


RESPONSE_STORE = web.AppKey("response_store", ResponseStore)
"""`request.app[RESPONSE_STORE]`: set on every app (in memory without a usage database)."""


# -- the database side (blocking: from the event loop, run these in a thread) ----------------


def load_row(path: Path, response_id: str, key: str | None, cutoff: float) -> StoredResponse | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=10)
    try:
        found = conn.execute(
            "SELECT id, time, key, model, body, input_items, conversation FROM responses "
            "WHERE id = ? AND key IS ? AND time >= ?",
            (response_id, key, cutoff),
        ).fetchone()
    except sqlite3.OperationalError:  # no table yet: a database older than stored responses
        return None
    finally:
        conn.close()
    return None if found is None else decode_row(found)


def delete_row(path: Path, response_id: str, key: str | None, cutoff: float) -> bool:
    conn = connect(path)
    try:
        cur = conn.execute(
            "DELETE FROM responses WHERE id = ? AND key IS ? AND time >= ?",
            (response_id, key, cutoff),
        )
        return cur.rowcount > 0
    finally:
        conn.close()


def delete_key(path: Path, key: str) -> int:
    """Delete every stored response of a key; how many went (for `llmd keys revoke`)."""
    if not path.exists():
        return 0
    conn = connect(path)
    try:
        return int(conn.execute("DELETE FROM responses WHERE key = ?", (key,)).rowcount)
    finally:
        conn.close()
