"""Anthropic's Messages API end to end: the real daemon and models, driven by the official
`anthropic` SDK unchanged (`anthropic.Anthropic(base_url=daemon.url, api_key=...)`):
`messages.create`, `messages.stream` (text, and a tool's `input_json_delta`), a tool_use /
tool_result round trip, count_tokens, stop sequences, max_tokens, errors as the SDK raises
them, and the usage records and metrics of the route.

The SDK (2.14) has no `temperature` argument any more; `extra_body` sends it, as clients do.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from llmd.auth.keys import add_key
from tests.e2e.api import GEMMA, SMOL, SMOL_FILE, WEATHER_PARAMETERS
from tests.e2e.conftest import bearer
from tests.e2e.test_metrics import Samples, delta

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

GREEDY = {"temperature": 0}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": WEATHER_PARAMETERS,
}
ONE_CALL: Any = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


_OPEN: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each test's clients closed at its end: a socket left to the garbage collector warns
    (an error under this suite's filterwarnings) in whichever test runs then."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(d: Daemon, key: str = "unused") -> anthropic.Anthropic:
    made = anthropic.Anthropic(base_url=d.url, api_key=key, max_retries=0)
    _OPEN.append(made)
    return made


def blocks(message: Any) -> list[dict[str, Any]]:
    """A message's content (the stream helper's blocks carry a `parsed_output` of their own)."""
    return [b.model_dump(exclude={"parsed_output"}) for b in message.content]


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_create_and_stream_give_the_same_message(daemon: Daemon) -> None:
    c = client(daemon)
    kw: dict[str, Any] = dict(
        model="smol",
        max_tokens=12,
        system="You are a storyteller.",
        messages=ask("Tell me a story about a fox."),
        extra_body=GREEDY,
    )
    created = c.messages.create(**kw)
    assert created.id.startswith("msg_") and created.type == "message"
    assert (created._request_id or "").startswith("req-")  # the SDK reads `request-id`
    assert created.role == "assistant" and created.model == "smol"
    assert created.stop_reason in ("end_turn", "max_tokens")
    (block,) = created.content
    assert block.type == "text" and block.text
    assert 0 < created.usage.output_tokens <= 12 and created.usage.input_tokens > 0
    # Computed again, not the response cache's answer: the prompt is found in the engine's.
    with c.messages.stream(**kw, extra_headers={"Cache-Control": "no-cache"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == block.text
    assert blocks(final) == blocks(created)
    assert (final.stop_reason, final.stop_sequence) == (created.stop_reason, None)
    assert final.usage.output_tokens == created.usage.output_tokens
    total = created.usage.input_tokens + (created.usage.cache_read_input_tokens or 0)
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == total
    assert final.usage.cache_read_input_tokens, "the same prompt again: read from the cache"


def test_stream_events_in_anthropics_order(daemon: Daemon) -> None:
    with client(daemon).messages.stream(
        model=SMOL, max_tokens=6, messages=ask("Say hello."), extra_body=GREEDY
    ) as stream:
        kinds = [event.type for event in stream]
    raw = [
        k
        for k in kinds
        if k
        in {
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        }
    ]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw[1] == "content_block_start" and raw[-3] == "content_block_stop"
    assert set(raw[2:-3]) == {"content_block_delta"}


def test_max_tokens_and_stop_sequences(daemon: Daemon) -> None:
    c = client(daemon)
    kw: dict[str, Any] = dict(
        model=SMOL, messages=ask("Count from one to twenty, in words."), extra_body=GREEDY
    )
    cut = c.messages.create(max_tokens=3, **kw)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 3)
    whole = c.messages.create(max_tokens=40, **kw)
    text = whole.content[0].text  # type: ignore[union-attr]
    assert len(text) > 8, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # stop strings match anywhere in the text
    before = text[: text.index(stop)]
    stopped = c.messages.create(max_tokens=40, stop_sequences=["@@never@@", stop], **kw)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert stopped.content[0].text == before  # type: ignore[union-attr]
    with c.messages.stream(max_tokens=40, stop_sequences=[stop], **kw) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)


def test_count_tokens_is_the_prompt_create_reads(daemon: Daemon) -> None:
    c = client(daemon)
    messages = ask(f"What rhymes with {uuid.uuid4().hex[:8]}?")
    kw: dict[str, Any] = dict(model=SMOL, system="Answer in one word.", messages=messages)
    counted = c.messages.count_tokens(**kw, tools=[WEATHER])
    created = c.messages.create(max_tokens=4, tools=[WEATHER], extra_body=GREEDY, **kw)
    usage = created.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    without_tools = c.messages.count_tokens(**kw)
    assert without_tools.input_tokens < counted.input_tokens  # the tools are in the prompt


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_a_tool_use_and_tool_result_round_trip(daemon: Daemon, model: str) -> None:
    c = client(daemon)
    messages: list[Any] = ask("What is the weather in Paris?")
    first = c.messages.create(
        model=model, max_tokens=100, messages=messages, tools=[WEATHER], tool_choice=ONE_CALL
    )
    assert first.stop_reason == "tool_use", first
    call = first.content[-1]
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert call.name == "get_weather" and set(call.input) == {"city", "unit"}
    assert call.input["unit"] in ("celsius", "fahrenheit")
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "22 degrees, sunny"}
            ],
        },
    ]
    second = c.messages.create(
        model=model,
        max_tokens=30,
        messages=messages,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    # An answer may be empty (content [], as Anthropic's can be): Gemma, a base model, at times.
    assert [b.type for b in second.content] in ([], ["text"])
    assert all("<tool_call>" not in b.text for b in second.content)  # type: ignore[union-attr]


def test_a_streamed_tool_use_sends_input_json_deltas(daemon: Daemon) -> None:
    partial = []
    with client(daemon).messages.stream(
        model=SMOL,
        max_tokens=100,
        messages=ask("What is the weather in Rome?"),
        tools=[WEATHER],
        tool_choice=ONE_CALL,
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert len(partial) > 1 and json.loads("".join(partial)) == call.input


class Cat(BaseModel):
    name: str = Field(max_length=20)
    age: int


def test_parse_holds_the_answer_to_the_output_format(daemon: Daemon) -> None:
    # Greedy: the SDK moves `maxLength` into the schema's description (Anthropic's structured
    # outputs take no length bounds), so a sampled name may run past max_tokens.
    parsed = client(daemon).messages.parse(
        model=SMOL,
        max_tokens=200,
        messages=ask("Describe a cat as a JSON object with its name and age."),
        output_format=Cat,
        extra_body=GREEDY,
    )
    assert parsed.stop_reason == "end_turn"
    assert isinstance(parsed.parsed_output, Cat)


def test_errors_as_the_sdk_raises_them(daemon: Daemon) -> None:
    c = client(daemon)
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model=SMOL, max_tokens=5, messages=ask("hi"), extra_body={"top_p": 2})
    assert bad.value.status_code == 400
    body: Any = bad.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("top_p: ")
    with pytest.raises(anthropic.BadRequestError, match="messages.0.content.0.type"):
        c.messages.create(
            model=SMOL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        }
                    ],
                }
            ],
        )
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.messages.create(model="no-such-model", max_tokens=5, messages=ask("hi"))
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="no-such-model", messages=ask("hi"))


CONFIG = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 512
parallel = 2

[models.smollm2]
path = "{SMOL_FILE}"
"""


def test_keys_usage_records_and_metrics(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    keys = tmp_path / "d0" / "keys.toml"
    _, admin = add_key(keys, "root", admin=True)
    _, secret = add_key(keys, "app", metrics=True)
    d = make_daemon(CONFIG)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client(d, "sk-wrong").messages.create(model=SMOL, max_tokens=5, messages=ask("hi"))
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    c = client(d, secret)  # the SDK sends it as x-api-key
    before = scrape_with(d, admin)
    created = c.messages.create(model=SMOL, max_tokens=5, messages=ask("Hi there."))
    with c.messages.stream(model=SMOL, max_tokens=6, messages=ask("Hello there.")) as stream:
        streamed = stream.get_final_message()
    after = scrape_with(d, admin)
    ok = dict(endpoint="/v1/messages", status="200", model=SMOL, key="app")
    assert delta(before, after, "llmd_requests_total", **ok) == 2
    out = created.usage.output_tokens + streamed.usage.output_tokens
    assert delta(before, after, "llmd_completion_tokens_total", model=SMOL, key="app") == out
    rows = httpx.get(
        d.url + "/api/v1/usage", params={"key": "app"}, headers=bearer(admin), timeout=10
    ).json()["data"][::-1]
    ours = [r for r in rows if r["endpoint"] == "/v1/messages" and r["status"] == 200]
    assert [r["stream"] for r in ours] == [0, 1]
    for row, message in zip(ours, (created, streamed), strict=True):
        prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            prompt,
            message.usage.output_tokens,
        )


def scrape_with(d: Daemon, admin: str) -> Samples:
    """/metrics, read with a key (keys are in force on this daemon)."""
    resp = httpx.get(d.url + "/metrics", headers=bearer(admin), timeout=10)
    assert resp.status_code == 200, resp.text
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_max_tokens_beyond_the_context_runs_to_the_window(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Agent clients send max_tokens far above a small model's context: the answer uses the
    room there is (Anthropic's "model_context_window_exceeded"), where chat completions
    refuses such a request with a 400."""
    d = make_daemon(CONFIG.replace("ctx_per_seq = 512", "ctx_per_seq = 64"))
    kw: dict[str, Any] = dict(
        model=SMOL, messages=ask("Count from one to five hundred, in words."), extra_body=GREEDY
    )
    counted = client(d).messages.count_tokens(**kw).input_tokens
    # 16,000: the SDK refuses a call it expects to run past 10 minutes without streaming.
    message = client(d).messages.create(max_tokens=16_000, **kw)
    assert message.stop_reason == "model_context_window_exceeded", message
    assert message.usage.output_tokens == 64 - counted
    with client(d).messages.stream(max_tokens=16_000, **kw) as stream:
        assert stream.get_final_message().stop_reason == "model_context_window_exceeded"
    small = client(d).messages.create(max_tokens=5, **kw)
    assert small.stop_reason == "max_tokens"  # the client's own limit, reached first
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        d.client().chat.completions.create(
            model=SMOL, max_tokens=100_000, messages=kw["messages"], temperature=0
        )


def test_the_model_list_as_the_sdk_reads_it(daemon: Daemon) -> None:
    """Anthropic's SDK sends `anthropic-version`: /v1/models answers it in Anthropic's shape
    (and in OpenAI's to everyone else)."""
    c = client(daemon)
    listed = c.models.list()
    ids = [m.id for m in listed.data]
    assert {SMOL, GEMMA} <= set(ids) and all(m.type == "model" for m in listed.data)
    first = c.models.list(limit=1)
    assert [m.id for m in first.data] == ids[:1] and first.has_more
    assert [m.id for m in c.models.list(after_id=ids[0]).data] == ids[1:]
    retrieved = c.models.retrieve(SMOL)
    assert retrieved.id == SMOL and retrieved.display_name == SMOL
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.models.retrieve("no-such-model")
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert daemon.client().models.list().data[0].object == "model"  # OpenAI's, unchanged
