"""`engine.batch_invariant` through the real daemon and models, with flash attention (its
default) and without: after a prompt of several hundred tokens (past the 256 cells where
llama.cpp's one-row flash attention splits its work), with two decode threads (where that split
changes the sums), greedy text and its logprobs are bit for bit the same with and without
speculation, and a request's answer is the same alone and sharing its steps with other streams.
With the default kernels the same request parts at a near-tie (llmd/engine/invariance.py;
bench/invariance.py measures each kernel's share).

Without the setting, flash attention off (the default "fastest" measures it off for SmolLM2 on
some CPUs) shapes the steps of a request decoding alone: SmolLM2's answer is the same with and
without speculation there too."""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any

import pytest

from bench.daemon import GEMMA as GEMMA_FILE
from bench.daemon import SMOL as SMOL_FILE
from tests.e2e.api import GEMMA, SMOL, model_health, speculation
from tests.e2e.conftest import start_daemon

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import Daemon

NO_CACHE = {"Cache-Control": "no-cache"}

CONFIG = f"""
[server]
default_model = "smollm2"
max_queue = 32

[engine]
ctx_per_seq = 2048
parallel = 4
batch_size = 256
threads = 2
INVARIANT
FLASH_ATTN

[engine.speculative]
adaptive = false

[models.smollm2]
path = "{SMOL_FILE}"

[models.gemma3-270m]
path = "{GEMMA_FILE}"
"""

SITES = ("Leeds", "Porto", "Lyon", "Graz", "Tartu", "Cork", "Brno", "Turku")


def report() -> str:
    """A passage of ~600 tokens and a question answered by quoting it."""
    lines = []
    for i, site in enumerate(SITES):
        lines.append(
            f"The {site} office closed the quarter with {12 + 7 * i} open tickets, "
            f"{3 + i} new hires and a budget of {140 + 15 * i} thousand euros. Its manager "
            f"reported that the printers on floor {i + 1} were replaced in week {4 + i}, "
            f"that the VPN outage on the {10 + i}th lasted {20 + 5 * i} minutes, and that "
            f"training for the new ticket system is planned for month {1 + i % 3}."
        )
    passage = "\n".join(lines)
    return (
        f"Quarterly report:\n{passage}\n\nQuote, word for word, what the report says about "
        f"the Lyon, Graz and Tartu offices.\nAnswer: The Lyon office"
    )


@pytest.fixture(scope="module", params=["on", "off"])
def flash_attn(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, flash_attn: str) -> Iterator[Daemon]:
    # "on" by leaving flash_attn at "auto" (llama.cpp's choice, made "on" for invariance).
    line = 'flash_attn = "off"' if flash_attn == "off" else 'flash_attn = "auto"'
    config = CONFIG.replace("INVARIANT", "batch_invariant = true").replace("FLASH_ATTN", line)
    d = start_daemon(tmp_path_factory.mktemp("invariant"), config)
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Without batch_invariant, flash attention off."""
    config = CONFIG.replace("INVARIANT", "").replace("FLASH_ATTN", 'flash_attn = "off"')
    d = start_daemon(tmp_path_factory.mktemp("alone"), config)
    yield d
    assert d.stop() == 0, d.logs()


def complete(daemon: Daemon, model: str, spec: bool, **kw: Any) -> Any:
    return daemon.client().completions.create(
        model=model,
        prompt=report(),
        extra_body=None if spec else {"speculative": False},
        extra_headers=NO_CACHE,
        **kw,
    )


def same(a: Any, b: Any) -> None:
    """Same text, tokens and logprobs, exactly."""
    assert a.choices[0].text == b.choices[0].text
    la, lb = a.choices[0].logprobs, b.choices[0].logprobs
    assert la.tokens == lb.tokens
    assert la.token_logprobs == lb.token_logprobs
    assert la.top_logprobs == lb.top_logprobs


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_greedy_after_a_long_prompt_is_the_same_with_and_without_drafts(
    daemon: Daemon, flash_attn: str, model: str
) -> None:
    health = model_health(daemon, model)
    assert health["flash_attn"] == flash_attn
    assert health["batch_invariant"] is True
    kw: dict[str, Any] = {"temperature": 0, "max_tokens": 120, "logprobs": 2}
    before = speculation(daemon, model)
    plain = complete(daemon, model, False, **kw)
    fast = complete(daemon, model, True, **kw)
    after = speculation(daemon, model)
    assert plain.usage.prompt_tokens > 400
    assert after[1] - before[1] > 10, "the answer quotes the prompt: drafts are confirmed"
    same(fast, plain)
    again = complete(daemon, model, True, **kw)
    same(again, fast)


def test_an_answer_is_the_same_alone_and_among_other_streams(daemon: Daemon) -> None:
    kw: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "seed": 7, "max_tokens": 80}
    kw["logprobs"] = 1
    alone = complete(daemon, SMOL, True, **kw)
    chatter = {"temperature": 1.0, "max_tokens": 80}

    def other(i: int) -> Any:
        return daemon.client().completions.create(
            model=SMOL,
            prompt=f"Write a short note to the team about day {i} of the move.",
            extra_headers=NO_CACHE,
            **chatter,
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        others = [pool.submit(other, i) for i in range(3)]
        crowded = complete(daemon, SMOL, True, **kw)
        for f in others:  # (an answer at temperature 1 may end at once: only that they ran)
            assert f.result().choices[0].finish_reason in ("stop", "length")
    same(crowded, alone)


def test_without_flash_attention_a_lone_answer_is_the_same_with_and_without_drafts(
    alone: Daemon,
) -> None:
    health = model_health(alone, SMOL)
    assert health["flash_attn"] == "off" and health["batch_invariant"] is False
    assert health["exact_steps"] == "alone"
    # Gemma-3's Q4_K weights take the tiled kernel from 8 rows: its steps are not shaped.
    assert model_health(alone, GEMMA)["exact_steps"] is None
    kw: dict[str, Any] = {"temperature": 0, "max_tokens": 120, "logprobs": 2}
    before = speculation(alone, SMOL)
    plain = complete(alone, SMOL, False, **kw)
    fast = complete(alone, SMOL, True, **kw)
    after = speculation(alone, SMOL)
    assert after[1] - before[1] > 10, "the answer quotes the prompt: drafts are confirmed"
    same(fast, plain)
    # A seed's sample too, and an answer of two choices (one request: still alone).
    kw = {"temperature": 0.7, "top_p": 0.95, "seed": 3, "max_tokens": 80, "logprobs": 1}
    same(complete(alone, SMOL, True, **kw), complete(alone, SMOL, False, **kw))
    two = complete(alone, SMOL, True, n=2, temperature=0, max_tokens=60)
    one = complete(alone, SMOL, False, temperature=0, max_tokens=60)
    assert two.choices[0].text == two.choices[1].text == one.choices[0].text
