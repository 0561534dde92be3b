"""Speculative decoding through the real daemon and models: drafts from the sequence's own
tokens are checked inside the batch step, and what comes out is exactly what one token a step
gives: greedy text token for token (with stop strings, a JSON schema and logprobs), a seed's
sampled text, and the distribution of unseeded samples. Each test also checks that drafts were
made and confirmed, so none passes by never speculating.

The daemon here checks every draft found (`adaptive = false`): whether drafting pays depends on
step times, which a busy machine distorts, and these tests are about exactness. The cost model's
choices are tested in tests/unit/test_speculative.py, and what it gives in bench/speculative.py.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.api import GEMMA, SMOL, model_health, speculation, warm_completion
from tests.e2e.conftest import BASE_CONFIG, start_daemon

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import Daemon

NO_CACHE = {"Cache-Control": "no-cache"}
OFF = {"speculative": False}

QUOTE = (
    "Copy this sentence exactly: The quarterly report shows that revenue grew by twelve "
    "percent, while costs stayed flat, and the board approved the new budget for the "
    "northern office. Copy: The quarterly report shows that"
)
LIST = (
    "Shopping list:\n- apples\n- bread\n- milk\n- eggs\n- butter\n- cheese\n\n"
    "The same shopping list again:\n-"
)
"""Prompts both models answer by repeating their own text: drafts are made and confirmed."""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Both models, every draft found checked."""
    config = BASE_CONFIG + "\n[engine.speculative]\nadaptive = false\n"
    d = start_daemon(tmp_path_factory.mktemp("speculative"), config)
    yield d
    assert d.stop() == 0, d.logs()


def chat(daemon: Daemon, model: str, spec: bool, **kw: Any) -> Any:
    return daemon.client().chat.completions.create(
        model=model, extra_body=None if spec else OFF, extra_headers=NO_CACHE, **kw
    )


def complete(daemon: Daemon, model: str, spec: bool, **kw: Any) -> Any:
    return daemon.client().completions.create(
        model=model, extra_body=None if spec else OFF, extra_headers=NO_CACHE, **kw
    )


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_greedy_output_is_the_same_with_and_without_drafts(daemon: Daemon, model: str) -> None:
    for prompt in (LIST, QUOTE):
        warm_completion(daemon.client(), prompt, model)
        before = speculation(daemon, model)
        kw: dict[str, Any] = {"prompt": prompt, "temperature": 0, "max_tokens": 96, "logprobs": 2}
        plain = complete(daemon, model, False, **kw)
        middle = speculation(daemon, model)
        assert middle == before  # the opted-out request drafted nothing
        fast = complete(daemon, model, True, **kw)
        drafted, accepted = speculation(daemon, model)
        assert accepted - middle[1] > 10, "the answer repeats the prompt: drafts are confirmed"
        assert fast.choices[0].text == plain.choices[0].text
        assert fast.choices[0].finish_reason == plain.choices[0].finish_reason
        assert fast.usage.completion_tokens == plain.usage.completion_tokens
        # The same tokens, and the same logprobs for SmolLM2 (Q4_1). Gemma-3's Q4_K_M weights
        # go through llama.cpp's repacked kernels, whose several-row path rounds differently
        # from its one-row path: its logprobs move by up to ~0.3 whenever a step holds several
        # rows, drafts or other streams alike (measured without speculation: a stream alone
        # against the same stream sharing steps with five others, docs/speculative.md).
        lp_fast, lp_plain = fast.choices[0].logprobs, plain.choices[0].logprobs
        assert lp_fast.tokens == lp_plain.tokens
        assert all(len(top) == 2 for top in lp_fast.top_logprobs)
        tolerance = 1e-4 if model == SMOL else 0.5
        pairs = zip(lp_fast.token_logprobs, lp_plain.token_logprobs, strict=True)
        assert max(abs(a - b) for a, b in pairs) <= tolerance


def test_stop_strings_max_tokens_and_n_end_inside_a_draft(daemon: Daemon) -> None:
    for kw in ({"stop": ["butter"]}, {"max_tokens": 37}, {"stop": ["eggs"], "n": 2}):
        args: dict[str, Any] = {"prompt": LIST, "temperature": 0, "max_tokens": 96, **kw}
        before = speculation(daemon, SMOL)
        plain = complete(daemon, SMOL, False, **args)
        fast = complete(daemon, SMOL, True, **args)
        assert [c.text for c in fast.choices] == [c.text for c in plain.choices]
        assert [c.finish_reason for c in fast.choices] == [c.finish_reason for c in plain.choices]
        assert fast.usage.completion_tokens == plain.usage.completion_tokens
        assert speculation(daemon, SMOL)[1] > before[1]


def test_structured_output_is_the_same_with_and_without_drafts(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tax_rate": {"type": "number"}},
        "required": ["name", "tax_rate"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema, "strict": True}}
    messages = [
        {
            "role": "user",
            "content": "The function total_price uses tax_rate 0.25. The function total_price "
            "uses tax_rate 0.25. Give its name and tax_rate as JSON.",
        }
    ]
    before = speculation(daemon, SMOL)
    args: dict[str, Any] = {"temperature": 0, "max_tokens": 60, "response_format": fmt}
    plain = chat(daemon, SMOL, False, messages=messages, **args)
    fast = chat(daemon, SMOL, True, messages=messages, **args)
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert speculation(daemon, SMOL)[0] > before[0]


def test_a_seed_gives_the_same_sample_with_and_without_drafts(daemon: Daemon) -> None:
    before = speculation(daemon, SMOL)
    for seed in (1, 2, 3):
        args: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "seed": seed}
        args.update(prompt=QUOTE, max_tokens=64)
        plain = complete(daemon, SMOL, False, **args)
        fast = complete(daemon, SMOL, True, **args)
        again = complete(daemon, SMOL, True, **args)
        assert fast.choices[0].text == plain.choices[0].text
        assert again.choices[0].text == fast.choices[0].text
    drafted, accepted = speculation(daemon, SMOL)
    assert accepted > before[1]


def _chi_square_bound(df: int) -> float:
    """The 0.1% upper point of chi-square with df degrees (Wilson-Hilferty)."""
    z = 3.090
    return float(df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3)


def test_unseeded_samples_follow_the_same_distribution(daemon: Daemon) -> None:
    """Two samples of 5-token continuations at temperature 1, one with drafts and one
    without, pass a two-sample chi-square test (0.1% level) on their counts."""
    draws = 120

    def sample(spec: bool) -> Counter[str]:
        counts: Counter[str] = Counter()
        for _ in range(draws):
            resp = daemon.client().completions.create(
                model=SMOL,
                prompt=QUOTE,
                max_tokens=5,
                temperature=1.0,
                extra_body=None if spec else OFF,
                extra_headers=NO_CACHE,
            )
            counts[resp.choices[0].text] += 1
        return counts

    before = speculation(daemon, SMOL)
    with_drafts = sample(True)
    drafted, accepted = speculation(daemon, SMOL)
    assert accepted > before[1] + draws // 2, "a quote is drafted and mostly confirmed"
    without = sample(False)
    # Outputs seen fewer than 5 times in both together are pooled into one category.
    total = with_drafts + without
    common = [text for text, count in total.items() if count >= 5]
    rows = [[with_drafts[t] for t in common], [without[t] for t in common]]
    rows[0].append(draws - sum(rows[0]))
    rows[1].append(draws - sum(rows[1]))
    columns = [a + b for a, b in zip(rows[0], rows[1], strict=True)]
    stat = 0.0
    for row in rows:
        for observed, column in zip(row, columns, strict=True):
            expected = column / 2  # equal sample sizes
            if expected > 0:
                stat += (observed - expected) ** 2 / expected
    df = sum(1 for c in columns if c > 0) - 1
    assert df >= 1, total
    assert stat < _chi_square_bound(df), (stat, df, with_drafts, without)


def test_a_disconnected_speculating_stream_leaves_its_slot_reusable(daemon: Daemon) -> None:
    """A client gone mid-answer: its slot keeps the confirmed tokens only, so the same prompt
    reuses the slot's cells and answers exactly as before, on the same model process."""
    pid = model_health(daemon, SMOL)["pid"]
    body = {"model": SMOL, "prompt": LIST, "max_tokens": 96, "temperature": 0, "stream": True}
    before = speculation(daemon, SMOL)
    with httpx.stream(
        "POST", f"{daemon.url}/v1/completions", json=body, headers=NO_CACHE, timeout=60
    ) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n > 20:
                break  # leave mid-answer: the daemon cancels the request
    assert speculation(daemon, SMOL)[0] > before[0]
    full = complete(daemon, SMOL, True, prompt=LIST, temperature=0, max_tokens=96)
    plain = complete(daemon, SMOL, False, prompt=LIST, temperature=0, max_tokens=96)
    assert full.choices[0].text == plain.choices[0].text
    assert model_health(daemon, SMOL)["pid"] == pid
