"""The grammar of tool calls (llmd/engine/grammar.py), compiled by llama.cpp for SmolLM2's real
vocabulary (the model's vocabulary only, no weights) and asked about a call's tokens one by one,
as the sampler asks it: a valid call is allowed to the end, an invalid one refused where it
goes wrong; "auto" lets text through until the call's opening (its Trigger, whose replacing of
a token that runs past the opening tests/unit/test_llama.py checks on the loaded model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bench.daemon import MODELS, SMOL
from llmd.engine.messages import Grammar
from llmd.tools import FunctionDefinition, Tool, ToolUse, plan_tools

WEATHER = FunctionDefinition(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
ORDER = FunctionDefinition(
    name="create_order",
    parameters={
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                "required": ["street", "city"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"ship_to": {"$ref": "#/$defs/Address"}, "gift": {"type": "boolean"}},
        "required": ["ship_to", "gift"],
        "additionalProperties": False,
    },
)
PING = FunctionDefinition(name="ping")  # no parameters: an empty object


def call(name: str, arguments: Any) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


PARIS = call("get_weather", {"city": "Paris", "unit": "celsius"})
HOME = call("create_order", {"ship_to": {"street": "1 Main St", "city": "Oslo"}, "gift": True})


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    import llama_cpp as lc

    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(MODELS / SMOL).encode(), params)
    assert model
    yield lc.llama_model_get_vocab(model)
    lc.llama_model_free(model)


def tokens(vocab: Any, text: str) -> list[int]:
    import llama_cpp as lc

    data = text.encode()
    out = (lc.llama_token * (len(data) + 8))()
    n = lc.llama_tokenize(vocab, data, len(data), out, len(out), False, True)
    assert n > 0
    return list(out[:n])


def piece(vocab: Any, token: int) -> bytes:
    import ctypes

    import llama_cpp as lc

    buf = ctypes.create_string_buffer(256)
    n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


def follow(vocab: Any, grammar: Grammar, text: str) -> tuple[int, bool]:
    """Feed `text` to `grammar` a token at a time, as the engine does (an "auto" grammar
    through its Trigger, which starts a grammar sampler when the opening is written): how
    many tokens it allowed before it refused one (all: the whole text), and whether it would
    allow the end of the answer there."""
    import functools

    import llama_cpp as lc

    from llmd.engine.grammar import Trigger, allows, compile_grammar

    assert compile_grammar(vocab, grammar) is None, grammar.gbnf
    trigger, sampler = None, None
    if grammar.lazy:
        trigger = Trigger(
            vocab, grammar, functools.partial(tokens, vocab), functools.partial(piece, vocab)
        )
    else:
        sampler = lc.llama_sampler_init_grammar(vocab, grammar.gbnf.encode(), b"root")
    try:
        ids = tokens(vocab, text)
        for i, token in enumerate(ids):
            if trigger is not None and sampler is None:
                written, sampler = trigger.take(token)
                if written != token:  # replaced: what the text has there is refused
                    return i, False
                continue
            if not allows(sampler, token):
                return i, False
            # Only an allowed token is accepted: llama.cpp aborts on one the grammar refuses.
            lc.llama_sampler_accept(sampler, token)
        eos = int(lc.llama_vocab_eos(vocab))
        return len(ids), sampler is None or allows(sampler, eos)
    finally:
        if sampler is not None:
            lc.llama_sampler_free(sampler)


def accepts(vocab: Any, grammar: Grammar, text: str) -> bool:
    """The grammar allows all of `text` and the end of the answer after it."""
    allowed, may_end = follow(vocab, grammar, text)
    return allowed == len(tokens(vocab, text)) and may_end


def refuses(vocab: Any, grammar: Grammar, text: str) -> bool:
    """The grammar refuses a token of `text`, or the end after it."""
    return not accepts(vocab, grammar, text)


def grammar(choice: str, parallel: bool = True, answer: Grammar | None = None) -> Grammar:
    g = ToolUse([WEATHER, ORDER, PING], choice, parallel).grammar(answer)
    assert g is not None
    return g


def test_required_calls_are_held_to_their_schemas(vocab: Any) -> None:
    required = grammar("required")
    assert accepts(vocab, required, PARIS)
    assert accepts(vocab, required, HOME)
    assert accepts(vocab, required, call("ping", {}))
    assert accepts(vocab, required, PARIS + "\n" + HOME)  # parallel calls
    assert accepts(
        vocab, required, call("get_weather", {"city": "Rome", "unit": "fahrenheit", "days": 3})
    )
    for wrong in [
        "Sure! " + PARIS,  # text before the call
        call("get_time", {}),  # no such function
        call("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum
        call("get_weather", {"city": "Paris"}),  # a required property missing
        call("get_weather", {"city": "Paris", "unit": "celsius", "wind": 1}),  # not allowed
        call("get_weather", {"city": "Paris", "unit": "celsius", "days": "3"}),  # wrong type
        call("get_weather", {"city": "Paris in the spring", "unit": "celsius"}),  # too long
        call("create_order", {"ship_to": {"street": "1 Main St"}, "gift": True}),  # nested
        call("ping", {"x": 1}),
        PARIS[:-1],  # the call's closing unfinished: the answer may not end there
        PARIS + " Done.",  # text after the call
    ]:
        assert refuses(vocab, required, wrong), wrong


def test_a_named_function_only(vocab: Any) -> None:
    named = grammar("create_order")
    assert accepts(vocab, named, HOME)
    assert refuses(vocab, named, PARIS)


def test_one_call_when_parallel_calls_are_off(vocab: Any) -> None:
    one = grammar("required", parallel=False)
    assert accepts(vocab, one, PARIS)
    assert refuses(vocab, one, PARIS + "\n" + HOME)
    assert refuses(vocab, one, PARIS + "\n<")


def test_auto_allows_text_until_the_opening_then_holds_the_call(vocab: Any) -> None:
    auto = grammar("auto")
    assert auto.lazy
    assert accepts(vocab, auto, "The weather in Paris is mild, 18 < 20 degrees. {json}")
    assert accepts(vocab, auto, "Let me check.\n" + PARIS)
    assert refuses(vocab, auto, "Let me check.\n" + call("get_weather", {"city": "Paris"}))
    assert refuses(vocab, auto, "Let me check.\n<tool_call>\nget_weather(Paris)")
    assert refuses(vocab, auto, PARIS + "\nThat was it.")
    # One token that ends the opening and runs on into what no call starts with.
    assert tokens(vocab, "<tool_call>.")[-1] == tokens(vocab, ">.")[0]
    assert refuses(vocab, auto, "Ok <tool_call>. Done")


def test_auto_with_a_response_format_is_a_call_or_the_answer(vocab: Any) -> None:
    answer = Grammar(
        "json_schema",
        json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
    )
    either = grammar("auto", answer=answer)
    assert not either.lazy
    assert accepts(vocab, either, '{"a": 1}')
    assert accepts(vocab, either, PARIS)
    assert refuses(vocab, either, '{"a": "one"}')
    assert refuses(vocab, either, "Plain text.")


def test_a_schema_the_converter_cannot_follow_is_refused(vocab: Any) -> None:
    from llmd.engine.grammar import compile_grammar

    for parameters in [
        {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=a)b$"}}},
        {"type": "object", "properties": {"a": {"type": "nonsense"}}},
    ]:
        use = ToolUse([FunctionDefinition(name="f", parameters=parameters)], "required", True)
        g = use.grammar(None)
        assert g is not None
        error = compile_grammar(vocab, g)
        assert error is not None and "tool 'f'" in error, error


def test_each_tool_resolves_its_own_refs(vocab: Any) -> None:
    """Two tools with the same `$defs` name and different definitions: each call is held to
    its own tool's."""

    def tool(name: str, kind: str) -> FunctionDefinition:
        return FunctionDefinition(
            name=name,
            parameters={
                "$defs": {"V": {"type": kind}},
                "type": "object",
                "properties": {"v": {"$ref": "#/$defs/V"}},
                "required": ["v"],
            },
        )

    both = ToolUse([tool("num", "integer"), tool("text", "string")], "required", True).grammar(None)
    assert both is not None
    assert accepts(vocab, both, call("num", {"v": 3}))
    assert accepts(vocab, both, call("text", {"v": "3"}))
    assert refuses(vocab, both, call("num", {"v": "3"}))
    assert refuses(vocab, both, call("text", {"v": 3}))


def test_integer_bounds_are_held(vocab: Any) -> None:
    """llama.cpp's converter ignores minimum / maximum; llmd holds an integer range of up to
    4,096 values, and a lower bound of 0, to them."""
    seats = FunctionDefinition(
        name="book",
        parameters={
            "type": "object",
            "properties": {
                "seats": {"type": "integer", "minimum": 1, "maximum": 9},
                "floor": {"type": "integer", "minimum": 0},
                "rating": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
            },
            "required": ["seats", "floor", "rating"],
        },
    )
    grammar = plan_tools([Tool(type="function", function=seats)], "required", False, None, None)
    assert grammar is not None
    held = grammar.grammar(None)
    assert held is not None

    def booking(seats: int, floor: int, rating: int) -> str:
        return call("book", {"seats": seats, "floor": floor, "rating": rating})

    assert accepts(vocab, held, booking(9, 0, 5)) and accepts(vocab, held, booking(1, 12, 1))
    for bad in (booking(10, 0, 5), booking(0, 0, 5), booking(3, -1, 5), booking(3, 0, 6)):
        assert refuses(vocab, held, bad), bad
