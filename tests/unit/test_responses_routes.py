"""GET / DELETE /v1/responses/{id} and GET .../input_items through the app in-process
(tests/unit/app_harness.py): responses saved through the app's own store are read back,
listed and deleted as OpenAI answers, each key seeing only its own; bad listings are 400s
naming the parameter; revoking a key deletes its stored responses; with usage off the store
is in memory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from llmd.auth.keys import add_key, revoke_key
from llmd.auth.middleware import AUTH
from llmd.usage.responses import RESPONSE_STORE, ResponseStore, StoredResponse
from tests.unit.app_harness import Harness, error_of, json_of, keys_file, serve

USAGE_ON = {"usage.enabled": True}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key(tmp_path: Path, name: str, **fields: Any) -> str:
    return add_key(keys_file(tmp_path), name, **fields)[1]


def store_of(h: Harness) -> ResponseStore:
    return h.client.app[RESPONSE_STORE]


def response(rid: str, key: str | None, items: int = 3) -> StoredResponse:
    inputs = [
        {
            "id": f"msg_{rid}_{n}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": f"turn {n}"}],
        }
        for n in range(items)
    ]
    output = {
        "id": f"msg_{rid}_out",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
    }
    now = time.time()  # within the retention period
    body = {"id": rid, "object": "response", "created_at": int(now), "status": "completed"}
    return StoredResponse(
        id=rid,
        key=key,
        created=now,
        model="smollm2",
        body={**body, "model": "smollm2", "output": [output]},
        input_items=inputs,
        conversation=[*inputs, output],
    )


async def not_found(h: Harness, method: str, path: str, rid: str, secret: str) -> None:
    resp = await h.client.request(method, path, headers=bearer(secret))
    error = await error_of(resp, 404, type_="invalid_request_error")
    assert error["message"] == f"No response found with id '{rid}'."


def test_each_key_reads_lists_and_deletes_only_its_own(tmp_path: Path) -> None:
    alice, bob = key(tmp_path, "alice"), key(tmp_path, "bob")

    async def test(h: Harness) -> None:
        saved = response("resp_a", "alice")
        await store_of(h).save(saved)
        await store_of(h).save(response("resp_b", "bob", items=1))
        path = "/v1/responses/resp_a"
        assert await json_of(await h.get(path, bearer(alice))) == saved.body
        await error_of(await h.get(path), 401, code="missing_api_key")
        await not_found(h, "GET", path, "resp_a", bob)
        await not_found(h, "GET", path + "/input_items", "resp_a", bob)
        await not_found(h, "DELETE", path, "resp_a", bob)
        await not_found(h, "GET", "/v1/responses/resp_nothing", "resp_nothing", alice)

        # Newest first by default, as OpenAI; paged with limit and after.
        ids = [item["id"] for item in saved.input_items]
        page = await json_of(await h.get(path + "/input_items", bearer(alice)))
        assert page == {
            "object": "list",
            "data": saved.input_items[::-1],
            "first_id": ids[2],
            "last_id": ids[0],
            "has_more": False,
        }
        first = await json_of(await h.get(path + "/input_items?order=asc&limit=2", bearer(alice)))
        assert [i["id"] for i in first["data"]] == ids[:2] and first["has_more"] is True
        assert (first["first_id"], first["last_id"]) == (ids[0], ids[1])
        rest = await json_of(
            await h.get(f"{path}/input_items?order=asc&limit=2&after={ids[1]}", bearer(alice))
        )
        assert [i["id"] for i in rest["data"]] == ids[2:] and rest["has_more"] is False
        last = await json_of(await h.get(f"{path}/input_items?after={ids[0]}", bearer(alice)))
        assert last["data"] == [] and last["first_id"] is None and last["has_more"] is False

        # Bob's tries changed nothing; Alice's delete is OpenAI's deletion object, once.
        assert await json_of(await h.get(path, bearer(alice))) == saved.body
        deleted = await h.client.delete(path, headers=bearer(alice))
        assert await json_of(deleted) == {"id": "resp_a", "object": "response", "deleted": True}
        await not_found(h, "GET", path, "resp_a", alice)
        await not_found(h, "DELETE", path, "resp_a", alice)
        assert await store_of(h).load("resp_b", "bob") is not None

        # Requests that count no tokens.
        mine = [rec for rec in h.records if rec.path.startswith("/v1/responses/")]
        assert len(mine) == 14
        assert all(rec.prompt_tokens == rec.completion_tokens == 0 for rec in mine)
        assert {rec.model for rec in mine} == {None}

    serve(tmp_path, test, config=USAGE_ON)


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("limit=0", "limit", "integer_below_min_value"),
        ("limit=101", "limit", "integer_above_max_value"),
        ("limit=many", "limit", "invalid_type"),
        ("limit=%EF%BC%95", "limit", "invalid_type"),  # a full-width 5
        ("order=newest", "order", None),
        ("after=msg_elsewhere", "after", None),
    ],
)
def test_bad_input_item_listings_are_400s_naming_the_parameter(
    tmp_path: Path, query: str, param: str, code: str | None
) -> None:
    async def test(h: Harness) -> None:
        await store_of(h).save(response("resp_a", None))
        resp = await h.get(f"/v1/responses/resp_a/input_items?{query}")
        await error_of(resp, 400, param=param, code=code, type_="invalid_request_error")

    serve(tmp_path, test, config=USAGE_ON)


def test_a_stored_response_is_not_streamed_again(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await store_of(h).save(response("resp_a", None))
        await error_of(await h.get("/v1/responses/resp_a?stream=true"), 400, param="stream")
        assert (await h.get("/v1/responses/resp_a?stream=false")).status == 200

    serve(tmp_path, test, config=USAGE_ON)


def test_revoking_a_key_in_the_admin_api_deletes_its_stored_responses(tmp_path: Path) -> None:
    admin = key(tmp_path, "root", admin=True)
    alice = key(tmp_path, "alice")
    key(tmp_path, "bob")

    async def test(h: Harness) -> None:
        for rid, owner in (("resp_1", "alice"), ("resp_2", "alice"), ("resp_3", "bob")):
            await store_of(h).save(response(rid, owner))
        assert (await h.get("/v1/responses/resp_1", bearer(alice))).status == 200
        revoked = await h.client.delete("/api/v1/keys/alice", headers=bearer(admin))
        assert (await json_of(revoked))["status"] == "revoked"
        assert await store_of(h).load("resp_1", "alice") is None
        assert await store_of(h).load("resp_2", "alice") is None
        assert await store_of(h).load("resp_3", "bob") is not None
        audit = await json_of(await h.get("/api/v1/audit?order=asc", bearer(admin)))
        entry = [e for e in audit["data"] if e["action"] == "key.revoked"][-1]
        assert entry["target"] == "alice" and entry["detail"] == {"responses": 2}

    serve(tmp_path, test, config=USAGE_ON)


def test_a_key_revoked_in_the_file_loses_the_responses_held_in_memory(tmp_path: Path) -> None:
    """`llmd keys revoke` deletes stored responses from the database; a daemon without one
    holds them in memory, and deletes them when it reads the changed keys file."""
    key(tmp_path, "alice")
    key(tmp_path, "bob")

    async def test(h: Harness) -> None:
        store = store_of(h)
        assert not store.persistent
        await store.save(response("resp_1", "alice"))
        await store.save(response("resp_2", "bob"))
        await asyncio.to_thread(revoke_key, keys_file(tmp_path), "alice")
        await h.client.server.app[AUTH].registry.reload()
        assert await store.load("resp_1", "alice") is None
        assert await store.load("resp_2", "bob") is not None

    serve(tmp_path, test)


def test_with_usage_off_responses_are_kept_in_memory(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        store = store_of(h)
        assert not store.persistent
        saved = response("resp_a", None)
        await store.save(saved)
        await store.save(response("resp_k", "alice"))
        assert await json_of(await h.get("/v1/responses/resp_a")) == saved.body
        # Without keys every request is keyless: a key's response is not found.
        await error_of(await h.get("/v1/responses/resp_k"), 404)
        listed = await json_of(await h.get("/v1/responses/resp_a/input_items?limit=1"))
        assert listed["data"] == [saved.input_items[-1]] and listed["has_more"] is True
        assert (await h.client.delete("/v1/responses/resp_a")).status == 200
        await error_of(await h.get("/v1/responses/resp_a"), 404)

    serve(tmp_path, test)  # the harness's default: usage.enabled = false
    assert not (tmp_path / "usage.db").exists()
