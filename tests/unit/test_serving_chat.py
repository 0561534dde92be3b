"""POST /v1/chat/completions in-process (tests/unit/app_harness.py): what reaches the engine,
the response and its SSE chunks, the 400s that need no real model, and a client that goes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llmd.engine.messages import Grammar, SamplingParams
from tests.unit.app_harness import (
    HI,
    SMOL,
    Harness,
    chunks_of,
    error_of,
    json_of,
    serve,
    sse_of,
    until,
)
from tests.unit.fake_process import FakeProcesses

CHAT = "/v1/chat/completions"


def chat_body(**kw: Any) -> dict[str, Any]:
    """As tests/e2e/api.py's: the story prompt, at most 8 tokens."""
    body: dict[str, Any] = {"model": SMOL, "messages": HI, "max_tokens": 8}
    body.update(kw)
    return body


# -- what the engine is asked -----------------------------------------------------------------


def test_sampling_is_the_request_then_the_models_defaults_then_the_builtins(
    tmp_path: Path,
) -> None:
    async def test(h: Harness) -> None:
        body = chat_body(
            top_p=0.5,
            seed=7,
            logit_bias={"5": 2},
            max_tokens=9,
            max_completion_tokens=3,  # wins over max_tokens
            stop="\n",
            n=2,
            ignore_eos=True,
            presence_penalty=0.0,
        )
        out = await json_of(await h.post(CHAT, body))
        (req,) = h.submitted()
        assert req.sampling == SamplingParams(
            temperature=0.3,  # the model's
            top_p=0.5,  # the request's
            top_k=20,  # the model's
            min_p=0.0,  # built-in from here on
            repeat_penalty=1.0,
            repeat_last_n=64,
            frequency_penalty=0.0,
            presence_penalty=0.0,
            max_tokens=3,
            seed=7,
            logit_bias={5: 2.0},
            grammar=None,
        )
        assert req.prompt == "<|im_start|>user\nSay hi to me<|im_end|>\n<|im_start|>assistant\n"
        assert (req.n, req.stop, req.logprobs, req.ignore_eos) == (2, ["\n"], None, True)
        assert (req.tenant, req.weight, req.embed, req.return_prompt_text) == (
            "127.0.0.1",
            1,
            False,
            False,
        )
        assert [(c["index"], c["message"]["content"]) for c in out["choices"]] == [
            (0, "Hello, world"),
            (1, "Hello, world"),
        ]
        assert [c["finish_reason"] for c in out["choices"]] == ["length", "length"]
        assert out["usage"]["completion_tokens"] == 6
        # Without a limit: the model's max_tokens; a request's 0 is a value, not "unset".
        await json_of(await h.post(CHAT, {"messages": HI, "temperature": 0, "stop": ["a", "b"]}))
        last = h.submitted()[-1]
        assert (last.sampling.max_tokens, last.sampling.temperature) == (50, 0.0)
        assert last.stop == ["a", "b"]

    serve(
        tmp_path,
        test,
        config={
            f"models.{SMOL}.sampling.temperature": 0.3,
            f"models.{SMOL}.sampling.top_k": 20,
            f"models.{SMOL}.sampling.max_tokens": 50,
        },
    )


def test_response_format_and_grammar_become_the_engines_grammar(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    named = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}

    async def test(h: Harness) -> None:
        for extra in (
            {"response_format": {"type": "json_object"}},
            {"response_format": named},
            {"grammar": 'root ::= "yes" | "no"'},
            {"response_format": {"type": "text"}},
        ):
            await json_of(await h.post(CHAT, chat_body(**extra)))
        assert [r.sampling.grammar for r in h.submitted()] == [
            Grammar("json_object"),
            Grammar("json_schema", json.dumps(schema), param="response_format.json_schema.schema"),
            Grammar("gbnf", 'root ::= "yes" | "no"', param="grammar"),
            None,
        ]

    serve(tmp_path, test)


def test_logprobs_asked_for_reach_the_engine_and_the_answer(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        top = await json_of(await h.post(CHAT, chat_body(logprobs=True, top_logprobs=3)))
        chosen = await json_of(await h.post(CHAT, chat_body(logprobs=True)))
        plain = await json_of(await h.post(CHAT, chat_body()))
        assert [r.logprobs for r in h.submitted()] == [3, 0, None]
        # The fake engine sends no logprobs: asked for, the field is there and empty.
        assert top["choices"][0]["logprobs"] == {"content": [], "refusal": None}
        assert chosen["choices"][0]["logprobs"] == {"content": [], "refusal": None}
        assert plain["choices"][0]["logprobs"] is None

    serve(tmp_path, test)


# -- the answer -------------------------------------------------------------------------------


def test_chat_completion_body(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        resp = await h.post(CHAT, chat_body())
        out = await json_of(resp)
        assert resp.headers["X-Request-Id"].startswith("req-")
        assert set(out) == {
            "id",
            "object",
            "created",
            "model",
            "system_fingerprint",
            "choices",
            "usage",
        }
        assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
        assert out["model"] == SMOL and out["created"] > 0
        assert out["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
        prompt_tokens = len(str(h.submitted()[0].prompt).split())
        assert out["usage"] == {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 4,
            "total_tokens": prompt_tokens + 4,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    serve(tmp_path, test)


def test_content_parts_and_names_are_what_the_template_renders(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Say hi "}, {"type": "text", "text": "to me"}]

    async def test(h: Harness) -> None:
        await json_of(await h.post(CHAT, chat_body(messages=[{"role": "user", "content": parts}])))
        await json_of(await h.post(CHAT, chat_body()))
        first, second = h.submitted()
        assert first.prompt == second.prompt

    serve(tmp_path, test)


def test_stream_role_chunk_first_then_deltas_finish_usage_and_done(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = chat_body(stream=True, stream_options={"include_usage": True})
        chunks = chunks_of(await sse_of(await h.post(CHAT, body)))
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
        assert [c["choices"] for c in chunks[:-1]] == [
            [{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]
            for d, f in [
                ({"role": "assistant", "content": ""}, None),
                ({"content": "Hello"}, None),
                ({"content": ","}, None),
                ({"content": " world"}, None),
                ({"content": "!"}, None),
                ({}, "stop"),
            ]
        ]
        # Only the last chunk carries usage; every other one says null.
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] == 4
        assert usage["total_tokens"] == usage["prompt_tokens"] + 4
        # Without include_usage, no chunk has a usage field.
        plain = chunks_of(await sse_of(await h.post(CHAT, chat_body(stream=True, max_tokens=2))))
        assert all("usage" not in c for c in plain)
        assert [c["choices"][0]["finish_reason"] for c in plain] == [None, None, None, "length"]

    serve(tmp_path, test)


def test_stream_of_n_choices_opens_each_with_its_role(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        body = chat_body(n=2, max_tokens=2, stream=True, stream_options={"include_usage": True})
        chunks = chunks_of(await sse_of(await h.post(CHAT, body)))
        assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
            {"role": "assistant", "content": ""}
        ] * 2
        assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
        by_index: dict[int, list[dict[str, Any]]] = {}
        for c in chunks[2:-1]:
            (choice,) = c["choices"]
            by_index.setdefault(choice["index"], []).append(choice)
        for index in (0, 1):
            text = "".join(c["delta"].get("content", "") for c in by_index[index])
            assert text == "Hello,"
            assert [c["finish_reason"] for c in by_index[index] if c["finish_reason"]] == ["length"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4

    serve(tmp_path, test)


def test_an_error_mid_stream_ends_the_stream_with_it(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()  # held after admission: the stream is open, nothing generated
        task = asyncio.create_task(
            h.post(CHAT, chat_body(stream=True, stream_options={"include_usage": True}))
        )
        await until(lambda: process.num_inflight == 1, "the request admitted")
        resp = await task  # the headers and the role chunk are out
        process.crash()
        payloads = await sse_of(resp)
        assert "[DONE]" not in payloads
        opening, error = (json.loads(p) for p in payloads)
        assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert error == {
            "error": {
                "message": f"model '{SMOL}' stopped unexpectedly and is restarting",
                "type": "server_error",
                "param": None,
                "code": "model_crashed",
            }
        }
        record = await h.record_of(CHAT)
        assert (record.status, record.error_code, record.stream) == (200, "model_crashed", True)

    serve(tmp_path, test)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_engine_request(tmp_path: Path, stream: bool) -> None:
    async def test(h: Harness) -> None:
        process = h.process()
        process.gate.clear()  # the request never ends by itself
        if stream:
            resp = await h.post(CHAT, chat_body(stream=True))
            assert resp.status == 200
            first = await resp.content.readline()
            assert b'"role": "assistant"' in first
            resp.close()  # hang up mid-stream
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(h.post(CHAT, chat_body()), 0.1)
        await until(lambda: process.num_inflight == 0, "the engine request cancelled")
        assert len(process.submitted) == 1
        record = await h.record_of(CHAT)
        assert record.status == 499  # nginx's "the client closed the connection first"
        # The slot is free: the next request is served as soon as the engine runs.
        process.gate.set()
        await json_of(await h.post(CHAT, chat_body()))

    serve(tmp_path, test)


def test_the_record_observers_get_holds_tokens_model_and_times(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await json_of(await h.post(CHAT, chat_body(model="smol")))
        record = await h.record_of(CHAT)
        prompt_tokens = len(str(h.submitted()[0].prompt).split())
        assert (record.model, record.stream, record.status, record.endpoint) == (
            SMOL,
            False,
            200,
            CHAT,
        )
        assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (
            prompt_tokens,
            4,
            0,
        )
        assert record.ttft_s is not None and record.latency_s is not None
        assert record.queue_wait_s is not None
        assert 0 <= record.queue_wait_s <= record.ttft_s <= record.latency_s
        assert record.error_code is None and record.client == "127.0.0.1"

    serve(tmp_path, test)


# -- refused ----------------------------------------------------------------------------------

# What tests/e2e/test_errors.py::test_chat_invalid_params checked before, less
# ({"n": 17}, "n"): that one is the engine's (n within the model's slots).
INVALID: list[tuple[dict[str, Any], str | None]] = [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, None),
    ({"messages": [{"content": "x"}]}, None),
    ({"temperature": 5}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 1000}}, "logit_bias"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"),  # outside the vocabulary (1000)
    ({"logit_bias": {"1000": 1}}, "logit_bias"),
    ({"top_logprobs": 3}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"stop": ["x"] * 20}, "stop"),
    ({"stream": "yes please"}, "stream"),
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
    ({"stream_options": 5}, "stream_options"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    # Issue 19's smaller faults:
    ({"logit_bias": {"\uff11\uff12": 1}}, "logit_bias"),  # full-width digits
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"keep_alive": "nan"}, "keep_alive"),
    ({"keep_alive": "inf"}, "keep_alive"),
    ({"n": 13}, "n"),  # above the harness's 4 slots + 8 queued: never fits, not a retryable 503
]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
# tests/e2e/test_structured.py's BAD before, the cases refused before the engine (the others need
# llama.cpp's grammar compiler).
STRUCTURED: list[tuple[dict[str, Any], str | None]] = [
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
        "response_format.json_schema.name",
    ),
    ({"grammar": ""}, "grammar"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
    ({"grammar": 'root ::= "' + "a" * 1_000_001 + '"'}, "grammar"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "big", "schema": {"enum": ["a" * 1_000_000]}},
            }
        },
        "response_format.json_schema.schema",
    ),
    ({"grammar": 'root ::= "a"', "tools": [TOOL]}, "grammar"),
]
ARRAY = {"type": "array"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
# Tool calling's mistakes (issue 15), refused before the engine.
TOOLS: list[tuple[dict[str, Any], str | None]] = [
    ({"tools": TOOL}, "tools"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [TOOL, TOOL]}, "tools[1]"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": ARRAY}}]},
        "tools[0].function.parameters",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice",
    ),
    ({"tools": [TOOL], "functions": [TOOL["function"]]}, "functions"),
    ({"function_call": {"name": "g"}, "functions": [TOOL["function"]]}, "function_call"),
    ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages[0].tool_call_id"),
    (
        {"messages": [{"role": "tool", "content": "18 C", "tool_call_id": "call_1"}]},
        "messages[0].tool_call_id",
    ),
    (
        {"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]},
        "messages[0].tool_calls",
    ),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].name"),
]


@pytest.mark.parametrize(
    ("change", "param"),
    INVALID + STRUCTURED + TOOLS,
    ids=lambda v: json.dumps(v)[:48] if isinstance(v, dict) else str(v),
)
def test_invalid_params_are_400_naming_the_param(
    tmp_path: Path, change: dict[str, Any], param: str | None
) -> None:
    async def test(h: Harness) -> None:
        body = chat_body(**change)
        if change.get("messages", 1) is None:
            del body["messages"]
        error = await error_of(
            await h.post(CHAT, body), 400, param=param, type_="invalid_request_error"
        )
        if "top_logprobs" in change and "logprobs" not in change:
            assert "logprobs" in error["message"]  # what the SDK's user reads
        assert h.submitted() == []
        # Nothing was harmed: the next request is served.
        await json_of(await h.post(CHAT, chat_body()))

    serve(tmp_path, test)


def test_a_model_without_a_chat_template_is_400_chat_template_missing(tmp_path: Path) -> None:
    processes = FakeProcesses()
    processes.configure("plain", metadata={"general.architecture": "xyz"})

    async def test(h: Harness) -> None:
        error = await error_of(
            await h.post(CHAT, chat_body(model="plain")),
            400,
            code="chat_template_missing",
            param="model",
            type_="invalid_request_error",
        )
        assert error["message"] == (
            "Model 'plain' has no chat template (architecture 'xyz') and none is configured: "
            "use /v1/completions, or set chat_template for it in the config."
        )
        assert h.submitted("plain") == []
        # Completions need no template.
        out = await json_of(await h.post("/v1/completions", {"model": "plain", "prompt": "x"}))
        assert out["choices"][0]["text"] == "Hello, world!"

    serve(tmp_path, test, files=["plain"], processes=processes)
