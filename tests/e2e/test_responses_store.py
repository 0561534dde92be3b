"""Stored Responses through the real daemon with the official `openai` SDK, unchanged:
`responses.retrieve`, `responses.input_items.list` (paged), `responses.delete`, each key seeing
only its own, and what `llmd usage purge` and revoking a key delete.

Two parts:
- The first needs no `POST /v1/responses`: it writes stored responses into the daemon's usage
  database itself (as llmd's store writes them, `encode_row`) and reads them back through the
  daemon, which reads that file at each request.
- The second (`needs_post`) makes them as a client does, with `responses.create`, and continues
  one with `previous_response_id`. It needs the RESPONSES helper's `POST /v1/responses`, and is
  skipped, saying so, on a daemon without it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from llmd.auth.keys import add_key
from llmd.usage.responses import StoredResponse, encode_row
from llmd.usage.store import connect
from tests.e2e.conftest import SMOL, Daemon, bearer, start_daemon

MODEL = "smollm2"

CONFIG = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 1024
parallel = 4

[models.smollm2]
path = "{SMOL}"
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon with keys and a usage database (usage.db beside its config); the admin key."""
    tmp = tmp_path_factory.mktemp("respstore")
    _, admin = add_key(tmp / "keys.toml", "root", admin=True)
    d = start_daemon(tmp, CONFIG)
    yield d, admin
    assert d.stop() == 0, d.logs()


def database(d: Daemon) -> Path:
    return d.log.parent / "usage.db"


def new_key(d: Daemon, admin: str) -> tuple[str, str]:
    name = f"r-{uuid.uuid4().hex[:8]}"
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 201, resp.text
    return name, resp.json()["secret"]


def client(d: Daemon, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)


def not_found(call: Any, response_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        call()
    error = info.value.body
    assert isinstance(error, dict), error
    assert error["message"] == f"No response found with id '{response_id}'."
    assert error["type"] == "invalid_request_error"


# -- stored responses written into the database, read back through the daemon ----------------


def stored(key: str, items: int, created: float | None = None) -> StoredResponse:
    """A Response as POST /v1/responses stores it: the object sent, input items with ids."""
    rid = f"resp_{uuid.uuid4().hex}"
    now = time.time() if created is None else created
    inputs = [
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": f"Question {n}?"}],
        }
        for n in range(items)
    ]
    output = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "An answer.", "annotations": []}],
    }
    body = {
        "id": rid,
        "object": "response",
        "created_at": int(now),
        "status": "completed",
        "model": MODEL,
        "output": [output],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 10,
        },
    }
    return StoredResponse(rid, key, now, MODEL, body, inputs, [*inputs, output])


def write(d: Daemon, *responses: StoredResponse) -> None:
    conn = connect(database(d))
    try:
        for one in responses:
            conn.execute(
                "INSERT INTO responses (id, time, key, model, body, input_items, conversation) "
                "VALUES (?,?,?,?,?,?,?)",
                encode_row(one),
            )
    finally:
        conn.close()


def test_retrieve_list_and_delete_with_the_sdk(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    alice_name, alice = new_key(d, admin)
    bob_name, bob = new_key(d, admin)
    mine, bobs = stored(alice_name, items=5), stored(bob_name, items=1)
    write(d, mine, bobs)
    ours = client(d, alice)

    got = ours.responses.retrieve(mine.id)
    assert got.id == mine.id and got.output_text == "An answer."
    assert got.model_dump(exclude_unset=True) == mine.body
    # The SDK pages through them itself (after= the last id of each page).
    ids = [item["id"] for item in mine.input_items]
    listed = ours.responses.input_items.list(mine.id, limit=2, order="asc")
    assert [item.id for item in listed.data] == ids[:2] and listed.has_more
    assert [item.id for item in listed] == ids  # every page
    newest = ours.responses.input_items.list(mine.id)  # desc, as OpenAI's default
    assert [item.id for item in newest.data] == ids[::-1]
    assert newest.data[0].type == "message" and newest.data[0].role == "user"

    # Bob's id is not Alice's to read, list or delete; nor is hers his.
    theirs = client(d, bob)
    not_found(lambda: ours.responses.retrieve(bobs.id), bobs.id)
    not_found(lambda: ours.responses.input_items.list(bobs.id), bobs.id)
    not_found(lambda: ours.responses.delete(bobs.id), bobs.id)
    not_found(lambda: theirs.responses.retrieve(mine.id), mine.id)
    assert theirs.responses.retrieve(bobs.id).id == bobs.id

    assert ours.responses.delete(mine.id) is None  # the SDK's answer to a delete
    not_found(lambda: ours.responses.retrieve(mine.id), mine.id)
    not_found(lambda: ours.responses.delete(mine.id), mine.id)

    # A response past the retention period (30 days) is gone, even before the hourly pass.
    old = stored(alice_name, items=1, created=time.time() - 31 * 86400)
    write(d, old)
    not_found(lambda: ours.responses.retrieve(old.id), old.id)

    # These requests counted no tokens.
    conn = sqlite3.connect(database(d))
    rows = conn.execute(
        "SELECT prompt_tokens, completion_tokens FROM usage WHERE endpoint LIKE "
        "'/v1/responses/%' AND key IN (?, ?)",
        (alice_name, bob_name),
    ).fetchall()
    conn.close()
    assert len(rows) >= 10 and set(rows) == {(0, 0)}


def cli(d: Daemon, *args: str) -> str:
    config = str(d.log.parent / "llmd.toml")
    argv = [sys.executable, "-m", "llmd", *args, "--config", config]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_purge_and_revoke_delete_stored_responses(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    name, secret = new_key(d, admin)
    other_name, other = new_key(d, admin)
    week_ago = time.time() - 7 * 86400
    old, recent, others = stored(name, 1, week_ago), stored(name, 1), stored(other_name, 1)
    write(d, old, recent, others)
    ours = client(d, secret)
    assert ours.responses.retrieve(old.id).id == old.id

    three_days_ago = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)).isoformat()
    out = cli(d, "usage", "purge", "--before", three_days_ago, "--key", name)
    assert out == f"deleted 0 usage record(s) and 1 stored response(s) before {three_days_ago}\n"
    not_found(lambda: ours.responses.retrieve(old.id), old.id)
    assert ours.responses.retrieve(recent.id).id == recent.id

    # Revoking the key through the admin API deletes the rest of its stored responses.
    resp = httpx.delete(f"{d.url}/api/v1/keys/{name}", headers=bearer(admin), timeout=30)
    assert resp.status_code == 200, resp.text
    conn = sqlite3.connect(database(d))
    left = [row[0] for row in conn.execute("SELECT id FROM responses WHERE key = ?", (name,))]
    conn.close()
    assert left == []
    assert client(d, other).responses.retrieve(others.id).id == others.id

    # And through the CLI.
    assert cli(d, "keys", "revoke", other_name) == (
        f"key '{other_name}' revoked; 1 stored response(s) deleted\n"
    )


# -- made by POST /v1/responses (the RESPONSES helper's route) ---------------------------------


@pytest.fixture(scope="module")
def needs_post(keyed: tuple[Daemon, str]) -> None:
    """Skip, saying why, on a daemon without POST /v1/responses."""
    d, admin = keyed
    resp = httpx.post(d.url + "/v1/responses", json={}, headers=bearer(admin), timeout=30)
    if resp.status_code == 404 and "No route" in resp.text:
        pytest.skip("needs POST /v1/responses (the RESPONSES branch): run after merging both")


def create(api: openai.OpenAI, text: str, **kw: Any) -> Any:
    return api.responses.create(model=MODEL, input=text, max_output_tokens=8, temperature=0, **kw)


@pytest.mark.usefixtures("needs_post")
def test_created_responses_are_stored_for_their_key(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    name, secret = new_key(d, admin)
    _, other = new_key(d, admin)
    ours, theirs = client(d, secret), client(d, other)

    first = create(ours, "Name a colour.")
    assert first.id.startswith("resp_")
    # Stored by default, exactly as sent, and found at once (committed before the answer).
    assert ours.responses.retrieve(first.id).model_dump() == first.model_dump()
    items = list(ours.responses.input_items.list(first.id, order="asc"))
    assert len(items) == 1 and items[0].type == "message" and items[0].role == "user"
    assert items[0].id  # every input item has an id
    not_found(lambda: theirs.responses.retrieve(first.id), first.id)

    # A follow-up continues from it; another key cannot.
    second = create(ours, "And another?", previous_response_id=first.id)
    assert second.id != first.id and second.status in ("completed", "incomplete")
    assert len(list(ours.responses.input_items.list(second.id))) == 1  # its own input only
    with pytest.raises(openai.APIStatusError) as info:
        create(theirs, "And another?", previous_response_id=first.id)
    assert info.value.status_code in (400, 404), info.value

    # store: false keeps nothing.
    unstored = create(ours, "Name a number.", store=False)
    not_found(lambda: ours.responses.retrieve(unstored.id), unstored.id)

    # A deleted response is gone, for follow-ups too.
    ours.responses.delete(first.id)
    not_found(lambda: ours.responses.retrieve(first.id), first.id)
    with pytest.raises(openai.APIStatusError):
        create(ours, "And another?", previous_response_id=first.id)

    conn = sqlite3.connect(database(d))
    kept = {row[0] for row in conn.execute("SELECT id FROM responses WHERE key = ?", (name,))}
    conn.close()
    assert kept == {second.id}


@pytest.mark.usefixtures("needs_post")
def test_a_streamed_response_is_stored_before_the_stream_ends(keyed: tuple[Daemon, str]) -> None:
    d, admin = keyed
    _, secret = new_key(d, admin)
    ours = client(d, secret)
    ends = ("response.completed", "response.incomplete")
    with ours.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=8) as stream:
        final = [event.response for event in stream if event.type in ends]
    assert len(final) == 1
    # Right after the last event: no wait, no retry.
    assert ours.responses.retrieve(final[0].id).model_dump() == final[0].model_dump()
