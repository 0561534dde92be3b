"""Tool calls in a chat without a model: the calls read back out of the model's text, whole
or a fragment at a time (llmd/serving/toolcalls.py's CallParser), the conversation written for
templates that know tools and those that do not, and the request's tool use checked
(llmd/tools.py's plan_tools)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from bench.daemon import MODELS, SMOL
from llmd.errors import InvalidRequest
from llmd.gguf import read_gguf
from llmd.protocol import ChatMessage
from llmd.serving.toolcalls import (
    RESULTS_PROMPT,
    CallArguments,
    CallParser,
    CallStart,
    Content,
    Piece,
    answer_message,
    knows_tools,
    parse_answer,
    template_messages,
)
from llmd.templates import ChatTemplate, choose_template
from llmd.tools import FunctionDefinition, FunctionName, NamedToolChoice, Tool, ToolUse, plan_tools

ROOT = Path(__file__).resolve().parents[2]
QWEN = (ROOT / "tests" / "fixtures" / "qwen2.5-tools.jinja").read_text()
SMOL_TEMPLATE = read_gguf(MODELS / SMOL).metadata["tokenizer.chat_template"]
"""SmolLM2's own template: ChatML, text content only."""
GEMMA_TEMPLATE = choose_template(None, {"general.architecture": "gemma3"}, "<bos>", "<eos>")

WEATHER_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    "\n</tool_call>"
)
TEXTS = {
    "content then a call": "Let me look that up.\n" + WEATHER_CALL,
    "two calls, nested arguments": (
        '<tool_call>\n{"name": "a", "arguments": {"x": {"y": [1, {"z": "}"}]}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b_2", "arguments": {}}\n</tool_call>'
    ),
    "markup inside an argument": (
        '<tool_call>\n{"name": "echo", "arguments": {"text": "a </tool_call> <tool_call> b"}}'
        "\n</tool_call>"
    ),
    "no space, escaped name": '<tool_call>{"name":"q\\u0031","arguments":{"k":"v"}}</tool_call>',
    "only content, with angle brackets": "if a < b and c <tool or <tool_cal> then <",
    "a call cut short": 'I will.\n<tool_call>\n{"name": "f", "arguments": {"a": {"b": 1}',
    "cut inside the next opening": WEATHER_CALL + "\n<tool_ca",
}
MARKUP = ("<tool_call>", "</tool_call>")


def read(fragments: list[str]) -> tuple[str, list[tuple[str, str]], list[Piece]]:
    """The content and (name, arguments) calls a parser reads out of `fragments`."""
    parser = CallParser()
    pieces = [p for f in fragments for p in parser.feed(f)] + parser.finish()
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    calls: list[list[str]] = []
    for p in pieces:
        if isinstance(p, CallStart):
            assert p.index == len(calls) and p.id.startswith("call_")
            calls.append([p.name, ""])
        elif isinstance(p, CallArguments):
            calls[p.index][1] += p.text
    return content, [(name, args) for name, args in calls], pieces


def whole(name: str) -> tuple[str, list[tuple[str, str]]]:
    content, calls, _ = read([TEXTS[name]])
    return content, calls


def test_a_whole_answer_is_read_into_content_and_calls() -> None:
    args = '{"city": "Paris", "unit": "celsius"}'
    assert whole("content then a call") == ("Let me look that up.\n", [("get_weather", args)])
    assert whole("two calls, nested arguments") == (
        "",
        [("a", '{"x": {"y": [1, {"z": "}"}]}}'), ("b_2", "{}")],
    )
    assert whole("markup inside an argument") == (
        "",
        [("echo", '{"text": "a </tool_call> <tool_call> b"}')],
    )
    assert whole("no space, escaped name") == ("", [("q1", '{"k":"v"}')])
    assert whole("only content, with angle brackets") == (
        TEXTS["only content, with angle brackets"],
        [],
    )
    assert whole("cut inside the next opening") == ("", [("get_weather", args)])


def test_a_call_cut_short_keeps_what_was_written() -> None:
    assert whole("a call cut short") == ("I will.\n", [("f", '{"a": {"b": 1}')])
    head = '<tool_call>\n{"name": "f", "arguments": '
    for written, arguments in [
        ('{"a": 1}', '{"a": 1}'),  # `}` held back in case it was the call object's
        ('{"a": 1} ', '{"a": 1} '),
        ('{"a": 1}}', '{"a": 1}'),  # the call object's `}`: not the arguments'
        ('{"a": 1}}\n</tool_', '{"a": 1}'),
        ('{"a": "x }', '{"a": "x }'),
    ]:
        content, calls, _ = read([head, written])
        assert (content, calls) == ("", [("f", arguments)]), written


@pytest.mark.parametrize("name", list(TEXTS))
def test_any_split_reads_as_the_whole(name: str) -> None:
    """Every split in two and three, and random splits into small fragments: the same content
    and calls as the whole text, and no fragment of content holds the markup."""
    text = TEXTS[name]
    expected = read([text])[:2]
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    splits += [
        [text[:i], text[i:j], text[j:]]
        for i in range(0, len(text), 3)
        for j in range(i, len(text), 5)
    ]
    rng = random.Random(name)
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text), rng.randint(1, 30))))
        splits.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    for fragments in splits:
        content, calls, pieces = read(fragments)
        assert (content, calls) == expected, fragments
        for piece in pieces:
            if isinstance(piece, Content):
                assert not any(mark in piece.text for mark in MARKUP), (fragments, piece)
    if name != "only content, with angle brackets":
        assert not any(mark in expected[0] for mark in MARKUP)


def test_a_possible_opening_is_held_back_and_released_at_the_end() -> None:
    parser = CallParser()
    assert parser.feed("a <") == [Content("a ")]
    assert parser.feed("tool_") == []
    assert parser.finish() == [Content("<tool_")]
    parser = CallParser()
    assert parser.feed("x <") == [Content("x ")]
    assert parser.feed("= y") == [Content("<= y")]
    assert parser.finish() == []


def test_the_calls_of_a_whole_answer() -> None:
    parsed = parse_answer(TEXTS["content then a call"])
    assert parsed.content == "Let me look that up."  # the line break before the call left out
    (call,) = parsed.calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris", "unit": "celsius"}',
    }
    assert parse_answer(WEATHER_CALL).content is None
    assert parse_answer("  just text\n") == parse_answer("  just text\n")
    assert parse_answer("  just text\n").content == "  just text\n"
    ids = [c["id"] for c in parse_answer(TEXTS["two calls, nested arguments"]).calls]
    assert len(set(ids)) == 2


def use(choice: str = "auto", parallel: bool = True, legacy: bool = False) -> ToolUse:
    return ToolUse([WEATHER, ORDER], choice, parallel, legacy)


def test_answer_messages_in_the_sdks_shape() -> None:
    message, calls = answer_message(WEATHER_CALL, use("required"))
    assert calls and message["content"] is None and len(message["tool_calls"]) == 1
    message, calls = answer_message(WEATHER_CALL, use("get_weather", legacy=True))
    assert calls and "tool_calls" not in message
    assert message["function_call"]["name"] == "get_weather"
    # With "none" nothing is read as a call.
    message, calls = answer_message(WEATHER_CALL, use("none"))
    assert not calls and message["content"] == WEATHER_CALL


WEATHER = FunctionDefinition(
    name="get_weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
ORDER = FunctionDefinition(name="create_order")
CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Weather in Paris and Rome?"),
    ChatMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        }
    ),
    ChatMessage(role="tool", tool_call_id="c1", content="18 C"),
    ChatMessage.model_validate(
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "25 C"}]}
    ),
]


def test_a_plain_template_gets_the_tools_in_its_system_prompt() -> None:
    messages, tools = template_messages(CONVERSATION, use(), aware=False)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in system and '"name": "create_order"' in system
    assert messages[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    assert messages[3]["content"] == (
        "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n25 C\n</tool_response>\n"
        + RESULTS_PROMPT
    )
    assert all(set(m) <= {"role", "content", "name"} for m in messages)
    prompt = ChatTemplate(SMOL_TEMPLATE, "", "", "test").render(messages).text
    assert "<|im_start|>assistant\n<tool_call>" in prompt
    assert GEMMA_TEMPLATE is not None
    prompt = GEMMA_TEMPLATE.render(messages).text
    assert "<start_of_turn>model\n<tool_call>" in prompt
    # No system message: one is added; a named function is the only one shown.
    messages, _ = template_messages(CONVERSATION[1:], use("create_order", False), aware=False)
    assert messages[0]["role"] == "system"
    assert '"create_order"' in messages[0]["content"]
    assert "get_weather" not in messages[0]["content"]
    assert "Call the function create_order now." in messages[0]["content"]
    assert "at most one" in messages[0]["content"]
    # "none": the tools are not shown.
    messages, _ = template_messages(CONVERSATION, use("none"), aware=False)
    assert messages[0]["content"] == "Be brief."


def test_a_tool_aware_template_gets_tools_and_calls_as_objects() -> None:
    assert knows_tools(QWEN) and not knows_tools(SMOL_TEMPLATE)
    messages, tools = template_messages(CONVERSATION, use(), aware=True)
    assert tools is not None and [t["function"]["name"] for t in tools] == [
        "get_weather",
        "create_order",
    ]
    assert tools[0] == {"type": "function", "function": WEATHER.model_dump(exclude_none=True)}
    calls = messages[2]["tool_calls"]
    assert calls[0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert [(m["role"], m["tool_call_id"], m["name"]) for m in messages[3:]] == [
        ("tool", "c1", "get_weather"),
        ("tool", "c2", "get_weather"),
    ]
    assert messages[4]["content"] == "25 C"
    template = choose_template(QWEN, {}, "", "<|im_end|>")
    assert template is not None
    prompt = template.render(messages, tools).text
    assert "# Tools" in prompt and '"name": "create_order"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in (
        prompt
    )
    assert "<tool_response>\n25 C\n</tool_response>" in prompt


def test_the_deprecated_function_messages_render_as_calls_and_results() -> None:
    conversation = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ),
        ChatMessage(role="function", name="get_weather", content="-3 C"),
    ]
    messages, _ = template_messages(conversation, use("auto", False, legacy=True), aware=True)
    call_id = messages[1]["tool_calls"][0]["id"]
    assert messages[2] == {
        "role": "tool",
        "content": "-3 C",
        "tool_call_id": call_id,
        "name": "get_weather",
    }
    messages, _ = template_messages(conversation, use("auto", False, legacy=True), aware=False)
    assert "<tool_call>" in messages[2]["content"]
    assert messages[3] == {
        "role": "user",
        "content": "<tool_response>\n-3 C\n</tool_response>\n" + RESULTS_PROMPT,
    }


TOOL = Tool(type="function", function=WEATHER)
OTHER = Tool(type="function", function=ORDER)


def plan(**kw: Any) -> ToolUse | None:
    args: dict[str, Any] = {
        "tools": None,
        "tool_choice": None,
        "parallel_tool_calls": None,
        "functions": None,
        "function_call": None,
    }
    return plan_tools(**{**args, **kw})


def test_plan_tools_defaults() -> None:
    assert plan() is None
    assert plan(tool_choice="none") is None
    assert plan(tool_choice="auto") is None
    got = plan(tools=[TOOL, OTHER])
    assert got is not None and (got.choice, got.parallel, got.legacy) == ("auto", True, False)
    assert got.calls_possible and not got.required
    assert got.offered() == [WEATHER, ORDER]
    got = plan(
        tools=[TOOL, OTHER],
        tool_choice=NamedToolChoice(type="function", function=FunctionName(name="create_order")),
        parallel_tool_calls=False,
    )
    assert got is not None and (got.choice, got.parallel, got.required) == (
        "create_order",
        False,
        True,
    )
    assert got.offered() == [ORDER]
    got = plan(tools=[TOOL], tool_choice="none")
    assert got is not None and not got.calls_possible and got.offered() == []
    got = plan(functions=[WEATHER], function_call=FunctionName(name="get_weather"))
    assert got is not None and (got.choice, got.parallel, got.legacy) == (
        "get_weather",
        False,
        True,
    )


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tool_choice": NamedToolChoice(type="function", function=FunctionName(name="f"))},
            "tool_choice",
        ),
        (
            {
                "tools": [TOOL],
                "tool_choice": NamedToolChoice(type="function", function=FunctionName(name="nope")),
            },
            "tool_choice",
        ),
        ({"function_call": FunctionName(name="f")}, "function_call"),
        ({"functions": [WEATHER], "function_call": FunctionName(name="nope")}, "function_call"),
        ({"tools": [TOOL], "functions": [WEATHER]}, "functions"),
        ({"tools": [TOOL, OTHER, TOOL]}, "tools[2]"),
        (
            {
                "tools": [
                    Tool(
                        type="function",
                        function=FunctionDefinition(name="s", parameters={"type": "string"}),
                    )
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {"functions": [FunctionDefinition(name="s", parameters={"type": "array"})]},
            "functions[0].parameters",
        ),
        (
            {
                "tools": [
                    Tool(
                        type="function",
                        function=FunctionDefinition(
                            name="big",
                            parameters={"type": "object", "description": "x" * 1_000_001},
                        ),
                    )
                ]
            },
            "tools",
        ),
    ],
)
def test_plan_tools_refusals_name_the_param(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        plan(**kw)
    assert exc.value.param == param


def test_the_grammar_a_tool_use_asks_for() -> None:
    from llmd.engine.messages import Grammar

    answer = Grammar("json_object")
    assert use("none").grammar(answer) is answer and use("none").grammar(None) is None
    required = use("required").grammar(answer)
    assert required is not None and required.kind == "tool_calls" and required.param == "tools"
    assert (required.lazy, required.answer, required.parallel) == (False, None, True)
    assert [t.name for t in required.tools] == ["get_weather", "create_order"]
    assert json.loads(required.tools[1].parameters) == {"type": "object", "properties": {}}
    assert (required.opening, required.closing) == ("<tool_call>", "</tool_call>")
    named = use("create_order", parallel=False).grammar(None)
    assert named is not None and [t.name for t in named.tools] == ["create_order"]
    assert not named.parallel
    auto = use().grammar(None)
    assert auto is not None and auto.lazy and auto.answer is None
    # "auto" with response_format: a call, or else the answer held to that format.
    auto = use().grammar(answer)
    assert auto is not None and not auto.lazy and auto.answer is answer


def test_a_required_answer_cut_inside_the_opening_has_no_content() -> None:
    required = ToolUse([FunctionDefinition(name="f")], "required", True)
    message, calls = answer_message("<tool", required)
    assert message["content"] is None and not calls
    auto = ToolUse([FunctionDefinition(name="f")], "auto", True)
    assert answer_message("<tool", auto)[0]["content"] == "<tool"


def test_a_model_that_cannot_call_stops_at_a_calls_opening() -> None:
    from llmd.protocol import ChatCompletionRequest

    tool = {"type": "function", "function": {"name": "f"}}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ask = [{"role": "user", "content": "hi"}]
    history = [*ask, {"role": "assistant", "content": None, "tool_calls": [call]}]
    history.append({"role": "tool", "tool_call_id": "c1", "content": "ok"})

    def stops(**body: object) -> list[str]:
        return list(ChatCompletionRequest.parse({"stop": "END", **body}).stop_list())

    assert stops(messages=ask) == ["END"]
    assert stops(messages=ask, tools=[tool]) == ["END"]  # "auto": calls are read, not stopped
    assert stops(messages=ask, tools=[tool], tool_choice="none") == ["END", "<tool_call>"]
    assert stops(messages=history) == ["END", "<tool_call>"]
