"""POST /v1/completions in-process (tests/unit/app_harness.py): prompts (text, token ids,
batches) into engine requests, echo and logprobs, the body and its SSE chunks, and the 400s
that need no real model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmd.sampling import resolve
from tests.unit.app_harness import (
    GEMMA,
    SMOL,
    Harness,
    chunks_of,
    error_of,
    json_of,
    serve,
    sse_of,
)

COMPLETIONS = "/v1/completions"


def body_of(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 8}
    body.update(kw)
    return body


def test_one_engine_request_per_prompt_with_its_choices(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        prompts = ["The capital of France is", "One, two, three,"]
        out = await json_of(await h.post(COMPLETIONS, body_of(prompt=prompts, n=2, max_tokens=2)))
        reqs = h.submitted(GEMMA)
        assert [(r.prompt, r.n) for r in reqs] == [(prompts[0], 2), (prompts[1], 2)]
        assert all(r.sampling == resolve(max_tokens=2) for r in reqs)
        assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
            (i, "Hello,", "length") for i in range(4)
        ]
        assert out["usage"]["prompt_tokens"] == 5 + 3  # the fake's tokens are words
        assert out["usage"]["completion_tokens"] == 4 * 2
        assert out["object"] == "text_completion" and out["model"] == GEMMA
        assert out["id"].startswith("cmpl-")

    serve(tmp_path, test)


def test_token_id_prompts(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        ids = [2, 818, 5, 529, 7, 563]
        one = await json_of(await h.post(COMPLETIONS, body_of(prompt=ids)))
        assert one["usage"]["prompt_tokens"] == len(ids)
        batch = await json_of(await h.post(COMPLETIONS, body_of(prompt=[ids, ids[:3]])))
        assert [c["index"] for c in batch["choices"]] == [0, 1]
        assert batch["usage"]["prompt_tokens"] == len(ids) + 3
        assert [r.prompt for r in h.submitted(GEMMA)] == [ids, ids, ids[:3]]
        # Echoing a token prompt asks the engine for its text.
        await json_of(await h.post(COMPLETIONS, body_of(prompt=ids, echo=True)))
        assert [r.return_prompt_text for r in h.submitted(GEMMA)] == [False] * 3 + [True]

    serve(tmp_path, test)


def test_echo_puts_the_prompt_in_front(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        prompt = "Roses are red, violets are"
        echoed = await json_of(await h.post(COMPLETIONS, body_of(prompt=prompt, echo=True)))
        assert echoed["choices"][0]["text"] == prompt + "Hello, world!"
        assert h.submitted(GEMMA)[0].return_prompt_text is False  # a text prompt is known
        body = body_of(prompt=prompt, echo=True, stream=True, max_tokens=1)
        chunks = chunks_of(await sse_of(await h.post(COMPLETIONS, body)))
        assert [c["choices"][0]["text"] for c in chunks] == [prompt, "Hello"]

    serve(tmp_path, test)


def test_logprobs_reach_the_engine(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        asked = await json_of(await h.post(COMPLETIONS, body_of(logprobs=2)))
        plain = await json_of(await h.post(COMPLETIONS, body_of()))
        assert [r.logprobs for r in h.submitted(GEMMA)] == [2, None]
        # The fake engine sends none: asked for, the field is there and empty.
        assert asked["choices"][0]["logprobs"] == {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        assert plain["choices"][0]["logprobs"] is None

    serve(tmp_path, test)


def test_stream_chunks_finish_usage_and_done(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = body_of(stream=True, stream_options={"include_usage": True}, ignore_eos=True)
        chunks = chunks_of(await sse_of(await h.post(COMPLETIONS, body)))
        assert h.submitted(GEMMA)[0].ignore_eos
        assert all(c["object"] == "text_completion" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert [c["choices"] for c in chunks[:-1]] == [
            [{"index": 0, "text": t, "logprobs": None, "finish_reason": f}]
            for t, f in [("Hello", None), (",", None), (" world", None), ("!", "stop")]
        ]
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 4
        assert chunks[-1]["usage"]["prompt_tokens"] == 5

    serve(tmp_path, test)


def test_completions_on_the_chat_model_send_the_prompt_as_it_is(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await json_of(await h.post(COMPLETIONS, body_of(model=SMOL, prompt="Hello, my name is")))
        assert h.submitted(SMOL)[0].prompt == "Hello, my name is"

    serve(tmp_path, test)


# What tests/e2e/test_errors.py::test_completion_invalid_params checked before, less
# ({"n": 3}, "n"): that one is the engine's (n within the model's slots).
INVALID = [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [-1, 5]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": [[1, 2], [999, 1000]]}, "prompt"),  # the fake's vocabulary is 1000
    # Each fits the fake's 2 slots + 8 queued; together they never would (issue 19).
    ({"prompt": ["a", "b", "c"], "n": 4}, "prompt"),
    # More characters than the harness's 256-token context could hold at 32 a token: refused
    # before it reaches the model process (issue 19's 30 MB completions prompt).
    ({"prompt": "x" * (256 * 32 + 1)}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"logprobs": 50}, "logprobs"),
    ({"suffix": "tail"}, "suffix"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"echo": "sure"}, "echo"),
    ({"logit_bias": {"1000": 1}}, "logit_bias"),
]


@pytest.mark.parametrize(
    ("change", "param"),
    INVALID,
    ids=lambda v: json.dumps(v)[:48] if isinstance(v, dict) else str(v),
)
def test_invalid_params_are_400_naming_the_param(
    tmp_path: Path, change: dict[str, Any], param: str
) -> None:
    async def test(h: Harness) -> None:
        body = {**body_of(max_tokens=4), **change}
        if body["prompt"] is None:
            del body["prompt"]
        await error_of(
            await h.post(COMPLETIONS, body), 400, param=param, type_="invalid_request_error"
        )
        assert h.submitted(GEMMA) == []

    serve(tmp_path, test)


def test_token_ids_outside_the_vocabulary_name_its_size(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        error = await error_of(await h.post(COMPLETIONS, body_of(prompt=[5, 1000])), 400)
        assert error["message"] == "token ids must be in [0, 1000)"
        error = await error_of(
            await h.post(COMPLETIONS, body_of(logit_bias={"1000": 1})), 400, param="logit_bias"
        )
        assert error["message"] == "logit_bias token 1000 is outside the vocabulary (size 1000)"

    serve(tmp_path, test)
