"""The llama.cpp backend (llmd/engine/llama.py) in-process on the real model: sampling under a
grammar, where llmd checks the likely tokens first instead of filtering the whole vocabulary. The
one unit test that loads llama.cpp; everything else of the backend is tested through the daemon."""

from __future__ import annotations

import json
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
                token, _ = b._choose(sampler, b._logits(index), True)
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
    lc.llama_sampler_accept(sampler.chain, token)
