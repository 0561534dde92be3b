"""The HTTP surface every endpoint shares, in-process (tests/unit/app_harness.py): bodies that
are not JSON objects, models (list, retrieve, aliases, the default, unknown ones), routes and
methods, and the refusals of a busy, broken or slow model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.unit.app_harness import (
    GEMMA,
    HI,
    SMOL,
    Harness,
    error_of,
    json_of,
    serve,
    sse_of,
    until,
)
from tests.unit.fake_process import FakeProcesses

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def test_bodies_that_are_not_json_objects_are_400(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        for path in (CHAT, COMPLETIONS, EMBEDDINGS):
            for content in (b"{not json", b"", b"\xff\xfe\x00"):
                await error_of(
                    await h.post(path, content=content), 400, type_="invalid_request_error"
                )
            for body in ([1, 2], "just a string", None):
                error = await error_of(await h.post(path, body), 400)
                assert error["message"] == "The request body must be a JSON object."
        error = await error_of(await h.post(CHAT, content=b"{not json"), 400)
        assert error["message"].startswith("We could not parse the JSON body of your request (")
        error = await error_of(await h.post(CHAT, content=b"\xff\xfe\x00"), 400)
        assert error["message"] == "The request body is not valid UTF-8."
        assert h.submitted() == []

    serve(tmp_path, test)


def test_an_unknown_model_is_404_model_not_found(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        bodies = {
            CHAT: {"model": "nope", "messages": HI},
            COMPLETIONS: {"model": "nope", "prompt": "hi"},
            EMBEDDINGS: {"model": "nope", "input": "hi"},
        }
        for path, body in bodies.items():
            error = await error_of(
                await h.post(path, body),
                404,
                code="model_not_found",
                param="model",
                type_="invalid_request_error",
            )
            assert error["message"] == (
                "The model 'nope' does not exist or you do not have access to it."
            )
            record = await h.record_of(path)
            assert (record.status, record.error_code) == (404, "model_not_found")

    serve(tmp_path, test)


def test_models_list_and_retrieve(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        listed = await json_of(await h.get("/v1/models"))
        assert listed["object"] == "list"
        assert sorted(m["id"] for m in listed["data"]) == sorted([SMOL, "smol", GEMMA])
        for card in listed["data"]:
            assert card["object"] == "model" and card["owned_by"] == "llmd"
            assert card["created"] > 0
        assert all(m["state"] == "ready" for m in listed["data"])  # configured: preloaded
        got = await json_of(await h.get(f"/v1/models/{SMOL}"))
        assert got["id"] == SMOL and got["object"] == "model"
        assert (await json_of(await h.get("/v1/models/smol")))["id"] == "smol"
        await error_of(
            await h.get("/v1/models/no-such-model"), 404, code="model_not_found", param="model"
        )

    serve(tmp_path, test)


def test_an_alias_and_no_model_at_all_reach_the_models_process(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        by_alias = await json_of(await h.post(CHAT, {"model": "smol", "messages": HI}))
        assert by_alias["model"] == "smol"  # answered under the name asked for
        default = await json_of(await h.post(CHAT, {"messages": HI}))
        assert default["model"] == SMOL
        assert len(h.submitted(SMOL)) == 2 and h.submitted(GEMMA) == []
        assert by_alias["choices"][0]["message"] == default["choices"][0]["message"]

    serve(tmp_path, test)


def test_unknown_routes_are_404_and_wrong_methods_405(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        error = await error_of(await h.get("/v1/nope"), 404)
        assert error["message"] == "No route for /v1/nope"
        await error_of(await h.post("/v1/nope", {}), 404)
        for path in (CHAT, COMPLETIONS, EMBEDDINGS):
            await error_of(await h.get(path), 405, type_="invalid_request_error")
        await error_of(await h.client.delete("/v1/models"), 405)

    serve(tmp_path, test)


def test_a_full_queue_is_refused_at_once_with_503_and_retry_after(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()  # the only slot stays taken
        held = asyncio.create_task(h.post(CHAT, {"messages": HI, "stream": True}))
        await until(lambda: process.num_inflight == 1, "the slot taken")
        for path, body in (
            (CHAT, {"messages": HI}),
            (COMPLETIONS, {"prompt": "hi"}),
            (EMBEDDINGS, {"input": "hi"}),
        ):
            resp = await h.post(path, body)
            error = await error_of(resp, 503, code="server_busy", type_="server_error")
            assert int(resp.headers["Retry-After"]) >= 1
            assert error["message"] == (
                f"model '{SMOL}' is busy: 1 sequences running or queued, limit 1; retry shortly"
            )
        process.gate.set()
        assert (await sse_of(await held))[-1] == "[DONE]"

    serve(tmp_path, test, config={f"models.{SMOL}.parallel": 1, "server.max_queue": 0})


def test_a_model_that_failed_to_load_is_503_naming_it(tmp_path: Path) -> None:
    processes = FakeProcesses()
    processes.configure("broken", fail_load="unknown model architecture: 'xyz'")

    async def test(h: Harness) -> None:
        resp = await h.post(COMPLETIONS, {"model": "broken", "prompt": "x"})
        error = await error_of(resp, 503, code="model_not_ready")
        assert "broken" in error["message"]
        assert "unknown model architecture: 'xyz'" in error["message"]
        assert "Retry-After" in resp.headers
        # The other models serve on.
        await json_of(await h.post(COMPLETIONS, {"model": SMOL, "prompt": "x"}))

    serve(tmp_path, test, files=["broken"], processes=processes)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_the_timeout_is_ended_and_cancelled(tmp_path: Path, stream: bool) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()
        resp = await h.post(CHAT, {"messages": HI, "stream": stream})
        if stream:  # the status line is gone: the error ends the stream
            payloads = await sse_of(resp)
            assert "[DONE]" not in payloads
            error = json.loads(payloads[-1])["error"]
        else:
            error = await error_of(resp, 504)
        assert error["code"] == "timeout" and error["type"] == "server_error"
        assert error["message"] == "The request took longer than the server's request timeout."
        await until(lambda: process.num_inflight == 0, "the engine request cancelled")
        assert (await h.record_of(CHAT)).error_code == "timeout"

    serve(tmp_path, test, config={"server.request_timeout_s": 0.1})
