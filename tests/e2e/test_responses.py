"""OpenAI's Responses API (POST /v1/responses) end to end: the real daemon, the real models and
the official `openai` SDK unchanged. A string and items, `create(stream=True)` and the SDK's
`responses.stream` helper (every event in order, numbered without a gap, each against
OpenAI's schema), `responses.parse(text_format=Model)`, a function tool round trip through
`function_call_output`, `previous_response_id` over turns (another key's id a 404),
`max_output_tokens` giving `incomplete`, a built-in tool refused, and the route counted by the
usage records and the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from llmd.auth.keys import add_key
from tests.contracts import validate, validate_responses_stream
from tests.e2e.api import SMOL, WEATHER_PARAMETERS
from tests.e2e.conftest import SMOL as SMOL_FILE
from tests.e2e.conftest import Daemon, bearer, start_daemon

STORY = "Write one sentence about a cat."
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}


def raw(response: Any) -> dict[str, Any]:
    """A Response as the daemon sent it (the SDK keeps the JSON it was built from)."""
    out: dict[str, Any] = response.model_dump(mode="json", exclude_unset=True, by_alias=True)
    for item in out["output"]:  # what responses.parse adds
        item.pop("parsed_arguments", None)
        for part in item.get("content", []):
            part.pop("parsed", None)
    return out


def squeeze(types: list[str]) -> list[str]:
    """Event types with runs of one type (the deltas) written once."""
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def sse_events(d: Daemon, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """A streamed response's events as sent (`event:` lines checked against the data)."""
    resp = httpx.post(d.url + "/v1/responses", json=body, headers=headers or {}, timeout=120)
    assert resp.status_code == 200, resp.text
    events = []
    for block in resp.text.strip().split("\n\n"):
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    validate_responses_stream(events)
    return events


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A Response less what differs between two runs of one request (ids, times, cache)."""
    out = {k: v for k, v in body.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [
        {k: v for k, v in item.items() if k not in ("id", "call_id")} for item in body["output"]
    ]
    if out.get("usage"):  # how much of the prompt was cached differs from one run to the next
        out["usage"] = {**out["usage"], "input_tokens_details": None}
    return out


def test_a_string_and_items(daemon: Daemon) -> None:
    client = daemon.client()
    r = client.responses.create(model=SMOL, input=STORY, max_output_tokens=24, temperature=0)
    validate("Response", raw(r))
    assert r.id.startswith("resp_") and r.object == "response" and r.model == SMOL
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert r.usage is not None and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    items = client.responses.create(
        model=SMOL,
        instructions="You answer in one short sentence.",
        input=[
            {"role": "user", "content": "Hi, I am Ann."},
            {"role": "assistant", "content": "Hello Ann!"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is my name?"}],
            },
        ],
        max_output_tokens=16,
        temperature=0,
        metadata={"run": "e2e"},
    )
    validate("Response", raw(items))
    assert items.output_text.strip()
    assert (items.instructions, items.metadata) == (
        "You answer in one short sentence.",
        {"run": "e2e"},
    )


def test_create_stream_and_the_stream_helper(daemon: Daemon) -> None:
    client = daemon.client()
    body = {"model": SMOL, "input": STORY, "max_output_tokens": 40, "temperature": 0}
    whole = client.responses.create(**body)
    events = list(client.responses.create(**body, stream=True))
    types = [e.type for e in events]
    end = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert squeeze(types) == [*TEXT_EVENTS[:-1], end]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    last = events[-1].response  # type: ignore[union-attr]
    assert comparable(raw(last)) == comparable(raw(whole))
    # The same again as sent, every event against its schema.
    sent = sse_events(daemon, {**body, "stream": True})
    assert comparable(sent[-1]["response"]) == comparable(raw(whole))
    # The SDK's helper: its accumulated snapshot and its final response.
    with client.responses.stream(**body) as stream:
        helper = [e.type for e in stream]
        final = stream.get_final_response() if whole.status == "completed" else None
    assert squeeze(helper) == squeeze(types)
    if final is not None:
        assert final.output_text == whole.output_text


class Pet(BaseModel):
    name: str
    species: str
    age: int


def test_parse_with_a_pydantic_model(daemon: Daemon) -> None:
    client = daemon.client()
    r = client.responses.parse(
        model=SMOL,
        input="Make up a pet.",
        text_format=Pet,
        max_output_tokens=80,
        temperature=0,
    )
    validate("Response", raw(r))
    assert isinstance(r.output_parsed, Pet)
    assert r.text.format is not None and r.text.format.type == "json_schema"


def test_a_function_tool_round_trip(daemon: Daemon) -> None:
    client = daemon.client()
    question = "What is the weather in Paris?"
    first = client.responses.create(
        model=SMOL,
        input=question,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=100,
        temperature=0,
    )
    validate("Response", raw(first))
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id is not None and call.id.startswith("fc_")
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city", "unit"}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "22 C, sunny"}
    # The whole conversation sent back as items (the SDK's output items as they came) ...
    answer = client.responses.create(
        model=SMOL,
        input=[{"role": "user", "content": question}, *first.output, result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=40,
        temperature=0,
    )
    validate("Response", raw(answer))
    assert [o.type for o in answer.output] == ["message"]
    assert answer.output_text.strip() and "<tool_call>" not in answer.output_text
    # ... or continued from the stored response.
    follow = client.responses.create(
        model=SMOL,
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=40,
        temperature=0,
    )
    assert follow.output_text == answer.output_text
    # The streamed call: its arguments as deltas, then whole.
    sent = sse_events(
        daemon,
        {
            "model": SMOL,
            "input": question,
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "max_output_tokens": 100,
            "temperature": 0,
            "stream": True,
        },
    )
    assert squeeze([e["type"] for e in sent]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert comparable(sent[-1]["response"]) == comparable(raw(first))


def test_max_output_tokens_gives_incomplete(daemon: Daemon) -> None:
    client = daemon.client()
    r = client.responses.create(model=SMOL, input=STORY, max_output_tokens=3)
    validate("Response", raw(r))
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3
    events = sse_events(
        daemon, {"model": SMOL, "input": STORY, "max_output_tokens": 3, "stream": True}
    )
    assert events[-1]["type"] == "response.incomplete"


def test_built_in_tools_and_background_are_refused(daemon: Daemon) -> None:
    client = daemon.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=SMOL,
            input="Search the web",
            tools=[{"type": "web_search"}],
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "tools[0].type"
    assert "web_search" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=SMOL, input="x", background=True)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "background"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=SMOL, input="x", previous_response_id="resp_nope")
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["code"] == "previous_response_not_found"


KEYED = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 1024
parallel = 4

[models.smollm2]
path = "{SMOL_FILE}"
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, str, str]]:
    """A daemon with keys and a usage database: an admin key and two users' secrets."""
    tmp = tmp_path_factory.mktemp("responses-keyed")
    _, admin = add_key(tmp / "keys.toml", "root", admin=True)
    _, ann = add_key(tmp / "keys.toml", "ann")
    _, bob = add_key(tmp / "keys.toml", "bob")
    d = start_daemon(tmp, KEYED)
    yield d, admin, ann, bob
    assert d.stop() == 0, d.logs()


def client_of(d: Daemon, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)


def test_previous_response_id_over_turns_and_only_for_its_key(
    keyed: tuple[Daemon, str, str, str],
) -> None:
    d, _, ann, bob = keyed
    mine = client_of(d, ann)
    first = mine.responses.create(
        model=SMOL, input="My name is Ann. Say hello.", max_output_tokens=16, temperature=0
    )
    second = mine.responses.create(
        model=SMOL,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=16,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    # The second turn's prompt held the first: more input tokens than the question alone.
    alone = mine.responses.create(
        model=SMOL, input="What is my name?", max_output_tokens=1, store=False
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens + 10
    with pytest.raises(openai.NotFoundError) as caught:
        client_of(d, bob).responses.create(
            model=SMOL, previous_response_id=first.id, input="And mine?", max_output_tokens=4
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"], body["type"]) == (
        "previous_response_not_found",
        "previous_response_id",
        "invalid_request_error",
    )
    with pytest.raises(openai.NotFoundError):  # not stored
        mine.responses.create(model=SMOL, previous_response_id=alone.id, input="x")


def test_usage_records_and_metrics_count_the_route(keyed: tuple[Daemon, str, str, str]) -> None:
    d, admin, _, _ = keyed
    name = "counted"
    resp = httpx.post(
        d.url + "/api/v1/keys", json={"name": name}, headers=bearer(admin), timeout=30
    )
    assert resp.status_code == 201, resp.text
    c = client_of(d, resp.json()["secret"])
    one = c.responses.create(model=SMOL, input=STORY, max_output_tokens=5)
    two = list(c.responses.create(model=SMOL, input=STORY, max_output_tokens=6, stream=True))
    usages = [one.usage, two[-1].response.usage]  # type: ignore[union-attr]
    rows = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": name, "group_by": "key"},
        headers=bearer(admin),
        timeout=10,
    ).json()["data"]
    (row,) = rows
    assert row["requests"] == 2 and row["errors"] == 0
    assert row["prompt_tokens"] == sum(u.input_tokens for u in usages if u is not None)
    assert row["completion_tokens"] == sum(u.output_tokens for u in usages if u is not None)
    listed = httpx.get(
        d.url + "/api/v1/usage", params={"key": name}, headers=bearer(admin), timeout=10
    ).json()["data"]
    assert {r["endpoint"] for r in listed} == {"/v1/responses"}
    assert sorted(r["stream"] for r in listed) == [0, 1]
    metrics = httpx.get(d.url + "/metrics", headers=bearer(admin), timeout=10).text
    counted = sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "llmd_requests_total"
        and s.labels.get("endpoint") == "/v1/responses"
        and s.labels.get("key") == name
    )
    assert counted == 2
