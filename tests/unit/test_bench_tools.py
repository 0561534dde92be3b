"""bench/tools.py's judge of an answer (its validity figure is only as right as this) and the
requests of its cost measure: held and free ask the same prompt, only the held one has tools."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat.chat_completion import Choice

from bench.tools import Side, cost_bodies, judge
from bench.toolset import COST_TOOL, SCHEMAS, TOOLS


def _choice(calls: list[tuple[str, str]], content: str | None = None) -> Choice:
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)
    ]
    return Choice.model_validate(
        {
            "index": 0,
            "finish_reason": "tool_calls" if calls else "stop",
            "message": {"role": "assistant", "content": content, "tool_calls": tool_calls or None},
        }
    )


WEATHER = {"location": {"city": "Lyon", "country": "France"}, "units": "metric", "days": 3}


def _weather(**change: Any) -> tuple[str, str]:
    return "get_weather", json.dumps({**WEATHER, **change})


def test_a_call_that_validates_is_valid() -> None:
    assert judge(0, _choice([_weather()]))["verdict"] == "valid"


@pytest.mark.parametrize(
    ("calls", "verdict"),
    [
        ([], "no call"),
        ([("send_email", "{}")], "unknown tool"),
        ([("get_weather", '{"location": {"city": "Lyon"}, "units": ')], "bad JSON"),
        ([_weather(units="kelvin")], "schema: enum"),
        ([_weather(days=12)], "schema: maximum"),
        ([("get_weather", json.dumps({"units": "metric"}))], "schema: required"),
        ([_weather(location={"country": "France"})], "schema: required"),
        ([_weather(extra=1)], "schema: additionalProperties"),
        ([_weather(), _weather()], "several calls"),
    ],
)
def test_why_an_answer_is_not_valid(calls: list[tuple[str, str]], verdict: str) -> None:
    assert judge(0, _choice(calls))["verdict"] == verdict


def test_formats_are_checked() -> None:
    meeting = {
        "title": "Budget review",
        "date": "2026-12-03",
        "start_time": "10:00",
        "duration_minutes": 30,
        "attendees": [{"name": "Maria Lopez", "email": "maria@acme.example"}],
    }
    assert judge(0, _choice([("book_meeting", json.dumps(meeting))]))["verdict"] == "valid"
    meeting["date"] = "tomorrow"
    assert judge(0, _choice([("book_meeting", json.dumps(meeting))]))["verdict"] == "schema: format"


def test_markup_left_in_content_is_counted() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    answer = judge(0, _choice([], text))
    assert answer["verdict"] == "no call" and answer["markup_in_content"]
    assert not judge(0, _choice([], "It is sunny."))["markup_in_content"]


def test_every_tool_is_judged_by_its_own_schema() -> None:
    assert set(SCHEMAS) == {t["function"]["name"] for t in TOOLS}
    assert all(s["additionalProperties"] is False for s in SCHEMAS.values())


@pytest.mark.parametrize("label", ["llmd", "llama-server"])
def test_held_and_free_ask_the_same_without_the_grammar(label: str) -> None:
    held, free = cost_bodies(Side(label, label), 3)
    assert held["tools"] == [COST_TOOL] and held["tool_choice"] == "required"
    assert free["extra_body"] == {"ignore_eos": True} and "extra_body" not in held
    assert free["messages"][1] == held["messages"][1]
    assert free["seed"] == held["seed"] and free["max_tokens"] == held["max_tokens"]
    if label == "llmd":
        # The tools as llmd writes them into the system prompt, and nothing to hold to.
        assert "tools" not in free and "tool_choice" not in free
        assert free["messages"][0]["content"].startswith(held["messages"][0]["content"])
        assert '"file_expense_report"' in free["messages"][0]["content"]
    else:
        # The template renders the tools; "none" leaves no grammar.
        assert free["tools"] == held["tools"] and free["tool_choice"] == "none"
