"""Text completions through the real daemon and models: string, list and token-id prompts, echo,
a chat model asked for a plain completion, and the raw body against OpenAI's schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.contracts import validate
from tests.e2e.api import GEMMA, SMOL, post, warm_completion

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def test_completion_string_prompt(daemon: Daemon) -> None:
    resp = daemon.client().completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert resp.object == "text_completion"
    assert resp.model == GEMMA
    assert len(resp.choices) == 1
    assert resp.choices[0].index == 0
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_completion_prompt_list(daemon: Daemon) -> None:
    client = daemon.client()
    prompts = ["The capital of France is", "One, two, three,"]
    warm_completion(client, prompts)
    single = [
        client.completions.create(model=GEMMA, prompt=p, max_tokens=6, temperature=0)
        for p in prompts
    ]
    resp = client.completions.create(model=GEMMA, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.text for c in resp.choices] == [s.choices[0].text for s in single]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single if s.usage)
    assert resp.usage.completion_tokens == sum(s.usage.completion_tokens for s in single if s.usage)


def test_completion_token_id_prompt(daemon: Daemon) -> None:
    client = daemon.client()
    ids = [2, 818, 5279, 529, 7001, 563]
    warm_completion(client, ids)
    resp = client.completions.create(model=GEMMA, prompt=ids, max_tokens=6, temperature=0)
    assert resp.choices[0].text
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(ids)
    # A batch of token-id prompts: one choice each.
    batch = client.completions.create(
        model=GEMMA, prompt=[ids, ids[:3]], max_tokens=4, temperature=0
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.usage is not None and batch.usage.prompt_tokens == len(ids) + 3
    # echo of a token prompt gives its text back in front.
    echoed = client.completions.create(
        model=GEMMA, prompt=ids, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text.endswith(resp.choices[0].text)
    assert len(echoed.choices[0].text) > len(resp.choices[0].text)


def test_completion_on_chat_model(daemon: Daemon) -> None:
    resp = daemon.client().completions.create(
        model=SMOL, prompt="Hello, my name is", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_completion_body_matches_openai_schema(daemon: Daemon) -> None:
    """The raw body, two prompts with logprobs and echo, as OpenAI's CreateCompletionResponse."""
    body = {"model": GEMMA, "prompt": ["One, two,", "Hi"], "max_tokens": 4, "logprobs": 2}
    resp = post(daemon, "/v1/completions", {**body, "echo": True})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert len(answer["choices"]) == 2 and answer["choices"][0]["logprobs"]["tokens"]
    validate("CreateCompletionResponse", answer)
