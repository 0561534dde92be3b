"""Where sampling values come from: the one place that decides.

Field by field, the first value given wins:
1. the request's own (chat and completions fields, llmd's extensions included);
2. the model's configured defaults (`[models.NAME.sampling]`, `settings.SamplingDefaults`);
3. the built-ins below: llama.cpp's neutral values, which change nothing (no penalty, no
   truncation, temperature 1), and no limit on output but the context.

The engine gets the result, complete (`SamplingParams` has no defaults of its own), and
applies it as it is. Protocol types call this through `SamplingRequest.to_sampling_params`.
"""

from __future__ import annotations

from typing import TypeVar

from llmd.engine.messages import Grammar, SamplingParams
from llmd.settings import SamplingDefaults

# Tokens of history the repetition penalties look at: llama.cpp's default, not configurable.
REPEAT_LAST_N = 64

_NOTHING_CONFIGURED = SamplingDefaults()
_T = TypeVar("_T")


def resolve(
    configured: SamplingDefaults = _NOTHING_CONFIGURED,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    repeat_penalty: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    logit_bias: dict[int, float] | None = None,
    grammar: Grammar | None = None,
) -> SamplingParams:
    """The parameters a request gets on a model with `configured` defaults. Keyword values
    are the request's, None where it gave none; `seed`, `logit_bias` and `grammar` come from
    the request alone."""
    c = configured
    return SamplingParams(
        temperature=_first(temperature, c.temperature, 1.0),
        top_p=_first(top_p, c.top_p, 1.0),
        top_k=_first(top_k, c.top_k, 0),
        min_p=_first(min_p, c.min_p, 0.0),
        repeat_penalty=_first(repeat_penalty, c.repeat_penalty, 1.0),
        repeat_last_n=REPEAT_LAST_N,
        frequency_penalty=_first(frequency_penalty, c.frequency_penalty, 0.0),
        presence_penalty=_first(presence_penalty, c.presence_penalty, 0.0),
        # None: as many as the context leaves after the prompt (the engine knows that length
        # once it has tokenized the prompt).
        max_tokens=max_tokens if max_tokens is not None else c.max_tokens,
        seed=seed,
        logit_bias=dict(logit_bias or {}),
        grammar=grammar,
    )


def _first(asked: _T | None, configured: _T | None, builtin: _T) -> _T:
    if asked is not None:
        return asked
    return configured if configured is not None else builtin
