"""Prefix reuse through the real daemon: a shared system prompt and a conversation's history
are found cached (usage.prompt_tokens_details.cached_tokens), and a cached prefix gives the
same result as one read fresh."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.api import SMOL

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def _system_prompt() -> str:
    tag = uuid.uuid4().hex[:8]
    facts = " ".join(
        f"Rule {i}: the assistant {tag} always answers politely and briefly about topic {i}."
        for i in range(20)
    )
    return f"You are assistant {tag}. {facts}"


def test_prefix_reuse_shared_system_prompt(daemon: Daemon) -> None:
    client = daemon.client()
    system = _system_prompt()

    def ask(question: str) -> Any:
        return client.chat.completions.create(
            model=SMOL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            max_tokens=8,
            temperature=0,
        )

    first = ask("What is the weather like?")
    assert first.usage is not None
    assert first.usage.prompt_tokens >= 300
    details = first.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens < 50
    second = ask("Name a fruit.")
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 250
    assert details.cached_tokens < second.usage.prompt_tokens


def test_prefix_reuse_multi_turn(daemon: Daemon) -> None:
    client = daemon.client()
    messages: list[dict[str, str]] = [
        {"role": "system", "content": _system_prompt()},
        {"role": "user", "content": "Tell me about apples."},
    ]
    turn1 = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=16, temperature=0
    )
    assert turn1.usage is not None
    messages += [
        {"role": "assistant", "content": turn1.choices[0].message.content or ""},
        {"role": "user", "content": "And pears?"},
    ]
    turn2 = client.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=8, temperature=0
    )
    assert turn2.usage is not None
    details = turn2.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= turn1.usage.prompt_tokens - 4
    assert details.cached_tokens < turn2.usage.prompt_tokens


def test_cached_prefix_gives_same_result(daemon: Daemon) -> None:
    """A reused prefix is the same KV the prompt would get again: same logprobs, same text.

    The prompt is 257 token ids: computed fresh, the engine (batch_size 256) reads 256 tokens
    and then decodes the last one alone, which is exactly what the second request, reusing the
    first 256 from the cache, does too. So the two must agree to float precision; prompts of
    other lengths may differ a little, llama.cpp's batched and single-token paths not being
    bit-identical.
    """
    client = daemon.client()
    rng = random.Random(uuid.uuid4().int)
    ids = [rng.randrange(1000, 40000) for _ in range(257)]
    runs = [
        client.completions.create(
            model=SMOL,
            prompt=ids,
            max_tokens=12,
            temperature=0,
            logprobs=1,
            extra_body={"ignore_eos": True},
            # The second computed again, not the first's answer from the response cache.
            extra_headers={"Cache-Control": "no-cache"},
        )
        for _ in range(2)
    ]
    first, second = runs
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 257
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == 256
    assert second.choices[0].text == first.choices[0].text
    a, b = first.choices[0].logprobs, second.choices[0].logprobs
    assert a is not None and b is not None and a.token_logprobs and b.token_logprobs
    assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-3)
