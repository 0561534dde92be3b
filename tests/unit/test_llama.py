"""The llama.cpp backend (llmd/engine/llama.py) in-process on the real model: sampling under a
grammar, where llmd checks the likely tokens first instead of filtering the whole vocabulary,
and the flash-attention probe at load (llmd/engine/attention.py). The one unit test file that
loads llama.cpp; everything else of the backend is tested through the daemon."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from bench.daemon import MODELS, SMOL
from tests.schemas import Cat


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_checking_likely_tokens_first_samples_what_filtering_everything_would(
    temperature: float,
) -> None:
    """In one process, on the real model: the shortcuts (the first pick checked alone, then
    the top few or a few redraws) against filtering the whole vocabulary at every token.
    Greedy, the two must write the same tokens; sampled, both must follow the grammar (the
    draws differ, the distribution is the same)."""
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import Grammar, LoadOptions
    from llmd.sampling import resolve

    b = LlamaBackend(LoadOptions(MODELS / SMOL, 512, 2, 512, 512, 1, 2, "auto", "f16"))
    grammar = Grammar("json_schema", json.dumps(Cat.model_json_schema()))
    assert b.compile_grammar(grammar) is None
    params = resolve(temperature=temperature, grammar=grammar)
    fast, full = b.new_sampler(params, 7), b.new_sampler(params, 7)
    prompt = b.tokenize(
        "<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n<|im_start|>assistant\n", False
    )
    texts: dict[int, bytes] = {0: b"", 1: b""}
    for seq, sampler in ((0, fast), (1, full)):
        assert b.decode([(t, i, seq, i == len(prompt) - 1) for i, t in enumerate(prompt)]) == 0
        index, pos = len(prompt) - 1, len(prompt)
        for _ in range(60):
            if sampler is fast:
                token = b.sample(sampler, index)
            else:
                logits = sampler.tokens.logits(b._logits(index))
                token = sampler.tokens.choose(b.grammar_filter(sampler.grammar, logits))
                lc_accept(sampler, token)
            if b.is_eog(token):
                break
            texts[seq] += b.token_bytes(token)
            assert b.decode([(token, pos, seq, True)]) == 0
            index, pos = 0, pos + 1
    for text in texts.values():
        Cat.model_validate_json(text)
    if temperature == 0.0:
        assert texts[0] == texts[1]
    b.free_sampler(fast)
    b.free_sampler(full)


def lc_accept(sampler: Any, token: int) -> None:
    import llama_cpp as lc

    lc.llama_sampler_accept(sampler.grammar, token)
    sampler.tokens.accept(token)


def test_a_token_running_past_a_calls_opening_is_replaced_not_fatal() -> None:
    """ "auto" tool calls: the grammar waits for the opening `<tool_call>`. A token that
    completes the opening and carries on into text no call starts with (`>.`) aborted the
    model process under llama.cpp's lazy grammar; llmd's Trigger writes `>` instead and holds
    the rest of the call to the grammar."""
    import functools

    import llama_cpp as lc

    from llmd.engine.grammar import Trigger, allows, write_gbnf
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import Grammar, LoadOptions, ToolSpec

    b = LlamaBackend(LoadOptions(MODELS / SMOL, 256, 1, 64, 64, 1, 1, "auto", "f16"))
    grammar = Grammar(
        "tool_calls",
        tools=[ToolSpec("f", json.dumps({"type": "object", "properties": {}}))],
        opening="<tool_call>",
        closing="</tool_call>",
        lazy=True,
    )
    grammar.gbnf = write_gbnf(grammar)

    def run(text: str) -> tuple[bytes, Any]:
        trigger = Trigger(
            b.vocab, grammar, functools.partial(b.tokenize, add_special=False), b.token_bytes
        )
        written, held = b"", None
        for token in b.tokenize(text, False):
            if held is not None:
                if not allows(held, token):
                    break
                lc.llama_sampler_accept(held, token)
            else:
                token, held = trigger.take(token)
            written += b.token_bytes(token)
        return written, held

    assert b"." in b.token_bytes(b.tokenize("<tool_call>.x", False)[-2])  # one token: ">."
    written, held = run("Hi <tool_call>.x")
    assert written == b"Hi <tool_call>" and held is not None  # ".x" refused by the grammar
    call = 'Hi <tool_call>{"name": "f", "arguments": {}}</tool_call>'
    written, held = run(call)
    assert written == call.encode() and held is not None
    written, held = run("Hi <tool_ca> no call")
    assert written == b"Hi <tool_ca> no call" and held is None
    b.close()


def test_a_json_string_refuses_a_raw_line_break() -> None:
    """llama-cpp-python's schema converter lets control characters into strings (`[^"\\]`);
    llmd's grammar refuses them, as JSON does: no token holding a line break may come next
    inside a string (Gemma-3 wrote one into a call's arguments at temperature 1)."""
    import llama_cpp as lc

    from llmd.engine.grammar import allows
    from llmd.engine.llama import LlamaBackend
    from llmd.engine.messages import Grammar, LoadOptions

    b = LlamaBackend(LoadOptions(MODELS / SMOL, 256, 1, 64, 64, 1, 1, "auto", "f16"))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    grammar = Grammar("json_schema", json.dumps(schema))
    assert b.compile_grammar(grammar) is None
    held = lc.llama_sampler_init_grammar(b.vocab, grammar.gbnf.encode(), b"root")
    for token in b.tokenize('{"a": "x', False):
        assert allows(held, token)
        lc.llama_sampler_accept(held, token)
    breaks = [t for t in range(b.n_vocab) if b"\n" in b.token_bytes(t)]
    assert breaks and not [t for t in breaks if allows(held, t)]
    assert allows(held, b.tokenize("y", False)[0])
    lc.llama_sampler_free(held)
    b.close()


def test_flash_attention_fastest_is_measured_on_the_real_model_and_others_are_kept() -> None:
    """`engine.flash_attn = "fastest"`: two small contexts of the loaded model, one each way, time
    the same steps after the same history, and the answer is one of the two; "on" and "off"
    and "auto" are kept as set, and with a quantized KV cache (which needs flash attention)
    llama.cpp decides."""
    import llama_cpp as lc

    from llmd.engine import attention
    from llmd.engine.messages import LoadOptions

    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(MODELS / SMOL).encode(), params)
    assert model
    try:
        options = LoadOptions(MODELS / SMOL, 512, 2, 512, 512, 1, 2, "fastest", "f16")
        times = attention.measure(model, options, 1)
        assert times is not None and sorted(times) == ["off", "on"]
        for one, verify in times.values():
            assert 0 < one < verify  # nine tokens with logits cost more than one
        assert attention.choose(model, options, 1) in ("on", "off")
        assert attention.choose(model, replace(options, flash_attn="off"), 1) == "off"
        assert attention.choose(model, replace(options, flash_attn="on"), 1) == "on"
        assert attention.choose(model, replace(options, flash_attn="auto"), 1) == "auto"
        assert attention.choose(model, replace(options, kv_type="q8_0"), 1) == "auto"
    finally:
        lc.llama_model_free(model)


@pytest.mark.parametrize(
    ("on", "off", "chosen"),
    [
        ([0.045, 0.180], [0.026, 0.060], "off"),  # SmolLM2 on the AVX-512 Xeon: clearly
        ([0.042, 0.100], [0.041, 0.097], "on"),  # a close call keeps llama.cpp's default
        ([0.041, 0.090], [0.045, 0.110], "on"),
    ],
)
def test_flash_attention_goes_off_only_when_that_is_clearly_faster(
    monkeypatch: pytest.MonkeyPatch, on: list[float], off: list[float], chosen: str
) -> None:
    from llmd.engine import attention
    from llmd.engine.messages import LoadOptions

    monkeypatch.setattr(attention, "measure", lambda _m, _o, _t: {"on": on, "off": off})
    options = LoadOptions(MODELS / SMOL, 512, 2, 512, 512, 1, 2, "fastest", "f16")
    assert attention.choose(object(), options, 1) == chosen
