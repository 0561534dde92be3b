"""The one merge point of sampling values (llmd/sampling.py), and the protocol types that
call it: the request's value, else the model's configured default, else the built-in."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llmd.engine.messages import Grammar, SamplingParams
from llmd.protocol import ChatCompletionRequest, CompletionRequest
from llmd.sampling import REPEAT_LAST_N, resolve
from llmd.settings import SamplingDefaults

# field: (a request's value, a model's configured default, the built-in)
LAYERED: dict[str, tuple[Any, Any, Any]] = {
    "temperature": (0.3, 0.7, 1.0),
    "top_p": (0.5, 0.95, 1.0),
    "top_k": (5, 40, 0),
    "min_p": (0.1, 0.05, 0.0),
    "repeat_penalty": (1.3, 1.1, 1.0),
    "frequency_penalty": (0.5, -0.5, 0.0),
    "presence_penalty": (0.4, -0.4, 0.0),
    "max_tokens": (10, 100, None),
}
# A falsy request value is still the request's (temperature 0 is greedy, not "unset").
FALSY = {"temperature": 0.0, "top_p": 0.0, "top_k": 0, "min_p": 0.0, "frequency_penalty": 0.0}


def test_every_engine_field_is_decided_here_and_has_no_default_of_its_own() -> None:
    fields = dataclasses.fields(SamplingParams)
    assert {f.name for f in fields} == set(LAYERED) | {
        "repeat_last_n",
        "seed",
        "logit_bias",
        "grammar",
    }
    missing = dataclasses.MISSING
    assert all(f.default is missing and f.default_factory is missing for f in fields)
    assert set(SamplingDefaults.model_fields) == set(LAYERED)


@pytest.mark.parametrize("name", LAYERED)
def test_request_then_model_default_then_builtin(name: str) -> None:
    asked, configured, builtin = LAYERED[name]
    model = SamplingDefaults.model_validate({name: configured})
    assert getattr(resolve(model, **{name: asked}), name) == asked
    assert getattr(resolve(model), name) == configured
    assert getattr(resolve(SamplingDefaults(), **{name: asked}), name) == asked
    assert getattr(resolve(SamplingDefaults()), name) == builtin
    assert getattr(resolve(), name) == builtin


@pytest.mark.parametrize("name", FALSY)
def test_a_falsy_request_value_still_wins(name: str) -> None:
    _, configured, _ = LAYERED[name]
    model = SamplingDefaults.model_validate({name: configured})
    assert getattr(resolve(model, **{name: FALSY[name]}), name) == FALSY[name]


def test_builtins_change_nothing() -> None:
    assert resolve() == SamplingParams(
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repeat_penalty=1.0,
        repeat_last_n=REPEAT_LAST_N,
        frequency_penalty=0.0,
        presence_penalty=0.0,
        max_tokens=None,
        seed=None,
        logit_bias={},
        grammar=None,
    )
    assert REPEAT_LAST_N == 64


def test_seed_bias_and_grammar_are_the_requests_alone() -> None:
    grammar = Grammar("json_object")
    model = SamplingDefaults(temperature=0.7)
    params = resolve(model, seed=7, logit_bias={5: -100.0}, grammar=grammar)
    assert (params.seed, params.logit_bias, params.grammar) == (7, {5: -100.0}, grammar)
    params = resolve(model)
    assert (params.seed, params.logit_bias, params.grammar) == (None, {}, None)


def test_the_logit_bias_given_is_not_shared() -> None:
    bias = {1: 1.0}
    resolve(logit_bias=bias).logit_bias[2] = 2.0
    assert bias == {1: 1.0}


CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}


def test_a_chat_request_gets_its_fields_merged_over_the_models() -> None:
    model = SamplingDefaults(temperature=0.7, top_p=0.95, max_tokens=50, repeat_penalty=1.1)
    req = ChatCompletionRequest.parse(
        {
            **CHAT,
            "temperature": 0,
            "top_k": 3,
            "seed": 4,
            "logit_bias": {"12": 5},
            "response_format": {"type": "json_object"},
        }
    )
    params = req.to_sampling_params(model)
    assert params == dataclasses.replace(
        resolve(),
        temperature=0,
        top_p=0.95,
        top_k=3,
        repeat_penalty=1.1,
        max_tokens=50,
        seed=4,
        logit_bias={12: 5.0},
        grammar=Grammar("json_object"),
    )


def test_chat_max_completion_tokens_wins_over_max_tokens() -> None:
    model = SamplingDefaults(max_tokens=50)
    both = {**CHAT, "max_tokens": 20, "max_completion_tokens": 10}
    assert ChatCompletionRequest.parse(both).to_sampling_params(model).max_tokens == 10
    legacy = {**CHAT, "max_tokens": 20}
    assert ChatCompletionRequest.parse(legacy).to_sampling_params(model).max_tokens == 20
    assert ChatCompletionRequest.parse(CHAT).to_sampling_params(model).max_tokens == 50


def test_a_completion_request_grammar_and_schema() -> None:
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    req = CompletionRequest.parse({"prompt": "x", "response_format": fmt})
    grammar = req.to_sampling_params(SamplingDefaults()).grammar
    assert grammar == Grammar(
        "json_schema", '{"type": "object"}', param="response_format.json_schema.schema"
    )
    req = CompletionRequest.parse({"prompt": "x", "grammar": 'root ::= "a"'})
    grammar = req.to_sampling_params(SamplingDefaults()).grammar
    assert grammar == Grammar("gbnf", 'root ::= "a"', param="grammar")
