"""POST /v1/embeddings in-process (tests/unit/app_harness.py): inputs into engine requests a
slot's worth at a time, the body (floats, base64, shortened), the 400s that need no real model,
and a client that goes."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from llmd.protocol import embeddings_body
from llmd.sampling import resolve
from tests.unit.app_harness import GEMMA, SMOL, Harness, error_of, json_of, serve, until

EMBEDDINGS = "/v1/embeddings"
N_EMBD = 8  # the fake's: every vector is 8 equal components of unit length


def test_each_input_is_read_for_its_vector_in_order(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        inputs = ["a cat sat", "a dog", "the same cat sat"]
        out = await json_of(await h.post(EMBEDDINGS, {"model": SMOL, "input": inputs}))
        reqs = h.submitted()
        assert [r.prompt for r in reqs] == inputs
        assert all(r.embed and r.sampling == resolve() and r.n == 1 for r in reqs)
        assert all(r.tenant == "127.0.0.1" for r in reqs)
        assert set(out) == {"object", "data", "model", "usage"}
        assert out["object"] == "list" and out["model"] == SMOL
        assert [(d["object"], d["index"]) for d in out["data"]] == [
            ("embedding", 0),
            ("embedding", 1),
            ("embedding", 2),
        ]
        unit = math.sqrt(1 / N_EMBD)
        for d in out["data"]:
            assert d["embedding"] == pytest.approx([unit] * N_EMBD)
        assert out["usage"] == {"prompt_tokens": 3 + 2 + 4, "total_tokens": 3 + 2 + 4}
        by_ids = await json_of(await h.post(EMBEDDINGS, {"model": "smol", "input": [5, 6, 7]}))
        assert h.submitted()[-1].prompt == [5, 6, 7]
        assert by_ids["usage"]["prompt_tokens"] == 3 and by_ids["model"] == "smol"

    serve(tmp_path, test)


def test_base64_is_the_float32_bytes_and_dimensions_shorten_to_unit_length(
    tmp_path: Path,
) -> None:
    async def test(h: Harness) -> None:
        floats = await json_of(await h.post(EMBEDDINGS, {"model": SMOL, "input": "x"}))
        b64 = await json_of(
            await h.post(EMBEDDINGS, {"model": SMOL, "input": "x", "encoding_format": "base64"})
        )
        assert (b64["object"], b64["model"]) == ("list", SMOL)
        assert (b64["data"][0]["object"], b64["data"][0]["index"]) == ("embedding", 0)
        # On the wire: base64 of little-endian float32, as OpenAI sends it.
        raw = base64.b64decode(b64["data"][0]["embedding"])
        assert list(struct.unpack(f"<{N_EMBD}f", raw)) == floats["data"][0]["embedding"]
        short = await json_of(
            await h.post(EMBEDDINGS, {"model": SMOL, "input": "x", "dimensions": 4})
        )
        assert short["data"][0]["embedding"] == pytest.approx([0.5] * 4)

    serve(tmp_path, test)


def test_dimensions_keep_the_first_components_scaled_back_to_unit_length() -> None:
    # The fake's vectors are uniform, so which components are kept shows only here.
    vector = struct.pack("<4f", 0.6, 0.0, 0.8, 0.0)
    body = embeddings_body([vector], "m", 3, "float", 2)
    assert body["data"][0]["embedding"] == pytest.approx([1.0, 0.0])
    body = embeddings_body([vector], "m", 3, "float", 3)
    assert body["data"][0]["embedding"] == pytest.approx([0.6, 0.0, 0.8])
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


def test_inputs_go_to_the_engine_a_slots_worth_at_a_time(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await json_of(await h.post(EMBEDDINGS, {"model": GEMMA, "input": "load it"}))
        process = h.process(GEMMA)  # two slots
        process.gate.clear()
        inputs = [f"input {i}" for i in range(7)]
        task = asyncio.create_task(h.post(EMBEDDINGS, {"model": GEMMA, "input": inputs}))
        await until(lambda: process.num_inflight == 2, "two inputs running")
        await asyncio.sleep(0.02)
        assert len(process.submitted) == 1 + 2  # not all seven: the queue stays free
        process.gate.set()
        out = await json_of(await task)
        assert [d["index"] for d in out["data"]] == list(range(7))
        assert [r.prompt for r in process.submitted[1:]] == inputs

    serve(tmp_path, test)


def test_a_client_that_goes_away_cancels_the_inputs_in_flight(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()
        body = {"model": SMOL, "input": [f"long input {i}" for i in range(20)]}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(h.post(EMBEDDINGS, body), 0.1)
        await until(lambda: process.num_inflight == 0, "the inputs cancelled")
        assert len(process.submitted) == 4  # one slot's worth (parallel 4), no more
        process.gate.set()
        out = await json_of(await h.post(EMBEDDINGS, {"model": SMOL, "input": "again"}))
        assert len(out["data"]) == 1

    serve(tmp_path, test)


# What the e2e test_bad_embedding_requests_are_400 checked, every case (moved here).
INVALID = [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["fine", ""]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": 5}, "input"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": 100_000}, "dimensions"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": [[1, 2, 10_000_000]]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": [1, -2]}, "input"),
]


@pytest.mark.parametrize(("body", "param"), INVALID)
def test_invalid_requests_are_400_naming_the_param(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async def test(h: Harness) -> None:
        await error_of(
            await h.post(EMBEDDINGS, {"model": SMOL, **body}),
            400,
            param=param,
            type_="invalid_request_error",
        )
        assert h.submitted() == []

    serve(tmp_path, test)


def test_dimensions_beyond_the_models_say_how_many_it_makes(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = {"model": SMOL, "input": "x", "dimensions": N_EMBD + 1}
        error = await error_of(await h.post(EMBEDDINGS, body), 400, param="dimensions")
        assert error["message"] == (
            f"dimensions must be at most {N_EMBD}: model '{SMOL}' makes embeddings of "
            f"{N_EMBD} dimensions"
        )
        ok = {"model": SMOL, "input": "x", "dimensions": N_EMBD}
        assert len((await json_of(await h.post(EMBEDDINGS, ok)))["data"][0]["embedding"]) == 8

    serve(tmp_path, test)
