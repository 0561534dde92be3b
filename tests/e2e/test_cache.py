"""The response cache end to end (issue 20): the real daemon, the real models, the official
`openai` and `anthropic` clients, and the `x-llmd-cache` header every answer carries.

A determined request (greedy, or a given seed, or an embedding) is computed once (`miss`) and
answered again from the cache (`hit`) with the same content and a fresh id, streamed or not,
by every API; a sampled request without a seed is never cached (`bypass`); one key never
reads another's entries unless the operator shares them; `Cache-Control` turns reading and
writing off; a replaced model file never serves its predecessor's answers; the memory backend
keeps to its byte bound however many entries go through it.

Every test asks about a prompt of its own (`fresh`), so the entries the other test files leave
in the shared daemon never answer it, and a rerun on the same daemon would still start with a
miss.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmd.auth.keys import add_key
from tests import tinybert
from tests.e2e.api import GEMMA, SMOL, WEATHER, chunk_text
from tests.e2e.conftest import GEMMA as GEMMA_FILE
from tests.e2e.conftest import MODELS, bearer, start_daemon
from tests.e2e.conftest import SMOL as SMOL_FILE

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

HEADER = "x-llmd-cache"
GREEDY: dict[str, Any] = {"temperature": 0}
NO_CACHE = {"Cache-Control": "no-cache"}
NO_STORE = {"Cache-Control": "no-store"}


def fresh(text: str = "Say hello to") -> str:
    """A prompt no other request of the session sends."""
    return f"{text} {uuid.uuid4().hex[:8]}."


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def chat(client: openai.OpenAI, prompt: str, **kw: Any) -> tuple[str | None, Any]:
    """(x-llmd-cache, the completion) of a non-streamed chat of 12 tokens at most."""
    body: dict[str, Any] = {"model": SMOL, "messages": ask(prompt), "max_tokens": 12, **GREEDY}
    body.update(kw)
    raw = client.chat.completions.with_raw_response.create(**body)
    return raw.headers.get(HEADER), raw.parse()


def stream(client: openai.OpenAI, prompt: str, **kw: Any) -> tuple[str | None, list[Any]]:
    """(x-llmd-cache, the chunks) of the same chat, streamed with its usage."""
    body: dict[str, Any] = {"model": SMOL, "messages": ask(prompt), "max_tokens": 12, **GREEDY}
    body.update(kw)
    raw = client.chat.completions.with_raw_response.create(
        stream=True, stream_options={"include_usage": True}, **body
    )
    return raw.headers.get(HEADER), list(raw.parse())


def same_answer(first: Any, again: Any) -> None:
    """Two chat completions are one stored answer: the same choices and usage, new ids."""
    assert again.choices == first.choices
    assert again.usage == first.usage
    assert again.id != first.id
    assert again.model == first.model


def finish_of(chunks: list[Any]) -> str | None:
    return next(
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    )


def usage_of(chunks: list[Any]) -> Any:
    (last,) = [c for c in chunks if c.usage is not None]
    return last.usage


# -- repeats: every API, streamed and not -------------------------------------------------


def test_chat_repeat_is_a_hit_with_the_same_answer(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    miss, first = chat(client, prompt)
    hit, again = chat(client, prompt)
    assert (miss, hit) == ("miss", "hit")
    assert first.choices[0].message.content
    same_answer(first, again)
    # Fields that never reach the engine do not make another entry.
    other, third = chat(client, prompt, user="someone-else", metadata={"run": "e2e"})
    assert other == "hit"
    same_answer(first, third)
    # One sampling parameter more does.
    changed, _ = chat(client, prompt, max_tokens=11)
    assert changed == "miss"


def test_streamed_hit_replays_the_stored_answer(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    miss, first = chat(client, prompt)
    hit, chunks = stream(client, prompt)
    assert (miss, hit) == ("miss", "hit")
    assert chunk_text(chunks) == first.choices[0].message.content
    assert finish_of(chunks) == first.choices[0].finish_reason
    assert usage_of(chunks) == first.usage
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, (
        "replayed piece by piece, as the engine streamed it"
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids != {first.id}


def test_streamed_miss_then_whole_hit(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    miss, chunks = stream(client, prompt)
    hit, whole = chat(client, prompt)
    assert (miss, hit) == ("miss", "hit")
    assert whole.choices[0].message.content == chunk_text(chunks)
    assert whole.choices[0].finish_reason == finish_of(chunks)
    assert whole.usage == usage_of(chunks)
    again, replayed = stream(client, prompt)
    assert again == "hit"
    assert [c.choices[0].delta.content for c in replayed if c.choices] == [
        c.choices[0].delta.content for c in chunks if c.choices
    ]


def test_completions_several_prompts_and_n(daemon: Daemon) -> None:
    client = daemon.client()
    body: dict[str, Any] = {
        "model": GEMMA,
        "prompt": [fresh("The city of"), fresh("A recipe for")],
        "max_tokens": 6,
        "n": 2,
        **GREEDY,
    }
    first = client.completions.with_raw_response.create(**body)
    again = client.completions.with_raw_response.create(**body)
    assert (first.headers[HEADER], again.headers[HEADER]) == ("miss", "hit")
    a, b = first.parse(), again.parse()
    assert len(a.choices) == 4 and [c.index for c in b.choices] == [0, 1, 2, 3]
    assert b.choices == a.choices and b.usage == a.usage and b.id != a.id
    # The prompts alone, or in the other order, are other requests.
    swapped = client.completions.with_raw_response.create(
        **{**body, "prompt": body["prompt"][::-1]}
    )
    assert swapped.headers[HEADER] == "miss"


def test_embeddings_hit_per_input_across_batches(daemon: Daemon) -> None:
    client = daemon.client()
    a, b, c, d = (fresh("Document") for _ in range(4))

    def embed(inputs: list[str]) -> tuple[str | None, Any]:
        raw = client.embeddings.with_raw_response.create(
            model=SMOL, input=inputs, encoding_format="float"
        )
        return raw.headers.get(HEADER), raw.parse()

    miss1, first = embed([a, b])
    miss2, second = embed([c])
    assert (miss1, miss2) == ("miss", "miss")
    vectors = {a: first.data[0].embedding, b: first.data[1].embedding, c: second.data[0].embedding}
    hit, mixed = embed([c, a, b])
    assert hit == "hit"
    assert [e.embedding for e in mixed.data] == [vectors[c], vectors[a], vectors[b]]
    assert [e.index for e in mixed.data] == [0, 1, 2]
    assert mixed.usage.prompt_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens
    # One input not seen before: the request is a miss; the others still come out the same.
    partly, out = embed([b, d])
    assert partly == "miss"
    assert out.data[0].embedding == vectors[b]
    assert embed([d])[0] == "hit"


def test_responses_api_repeat(daemon: Daemon) -> None:
    client = daemon.client()
    body: dict[str, Any] = {
        "model": SMOL,
        "input": fresh("Name a color for"),
        "max_output_tokens": 12,
        "temperature": 0,
    }
    first = client.responses.with_raw_response.create(**body)
    again = client.responses.with_raw_response.create(**body)
    assert (first.headers[HEADER], again.headers[HEADER]) == ("miss", "hit")
    a, b = first.parse(), again.parse()
    assert a.output_text and b.output_text == a.output_text
    assert (b.status, b.usage) == (a.status, a.usage)
    assert b.id != a.id and b.output[0].id != a.output[0].id
    # Streamed from the same entry.
    events = client.responses.with_raw_response.create(**body, stream=True)
    assert events.headers[HEADER] == "hit"
    deltas = [e.delta for e in events.parse() if e.type == "response.output_text.delta"]
    assert "".join(deltas) == a.output_text


def test_one_entry_answers_chat_and_responses(daemon: Daemon) -> None:
    """The key is the engine request: a Responses request asking the engine what a chat
    completion asked is answered by the chat's entry."""
    client = daemon.client()
    prompt = fresh()
    miss, first = chat(client, prompt)
    raw = client.responses.with_raw_response.create(
        model=SMOL, input=prompt, max_output_tokens=12, temperature=0
    )
    assert (miss, raw.headers[HEADER]) == ("miss", "hit")
    assert raw.parse().output_text == first.choices[0].message.content


def test_logprobs_are_stored(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    kw: dict[str, Any] = {"logprobs": True, "top_logprobs": 2, "max_tokens": 4}
    miss, first = chat(client, prompt, **kw)
    hit, again = chat(client, prompt, **kw)
    assert (miss, hit) == ("miss", "hit")
    content = first.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 for t in content)
    same_answer(first, again)
    # Without logprobs the engine is asked something else.
    assert chat(client, prompt, max_tokens=4)[0] == "miss"


def test_anthropic_messages_repeat(daemon: Daemon) -> None:
    with anthropic.Anthropic(base_url=daemon.url, api_key="unused", max_retries=0) as client:
        kw: dict[str, Any] = {
            "model": "smol",
            "max_tokens": 12,
            "messages": ask(fresh("Tell a fact about")),
            "extra_body": GREEDY,
        }
        first = client.messages.with_raw_response.create(**kw)
        again = client.messages.with_raw_response.create(**kw)
        assert (first.headers[HEADER], again.headers[HEADER]) == ("miss", "hit")
        a, b = first.parse(), again.parse()
        assert a.content and b.content == a.content
        assert (b.stop_reason, b.usage) == (a.stop_reason, a.usage)
        assert b.id != a.id
        with client.messages.stream(**kw) as events:
            text = "".join(events.text_stream)
            final = events.get_final_message()
        assert text == "".join(block.text for block in a.content if block.type == "text")
        assert final.usage.output_tokens == a.usage.output_tokens


def test_tool_calls_repeat(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = f"What is the weather in Paris? ({uuid.uuid4().hex[:6]})"
    kw: dict[str, Any] = {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_tokens": 32,
    }
    miss, first = chat(client, prompt, **kw)
    hit, again = chat(client, prompt, **kw)
    assert (miss, hit) == ("miss", "hit")
    calls = first.choices[0].message.tool_calls
    assert calls, first
    assert [
        (c.function.name, c.function.arguments) for c in again.choices[0].message.tool_calls
    ] == [(c.function.name, c.function.arguments) for c in calls]
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert again.usage == first.usage
    streamed, chunks = stream(client, prompt, **kw)
    assert streamed == "hit"
    args = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or []
    )
    assert args == calls[0].function.arguments


def test_structured_output_repeat(daemon: Daemon) -> None:
    """A JSON schema's answer is kept with its grammar in the key: the same schema hits, another
    schema over the same prompt misses."""
    client = daemon.client()
    prompt = fresh("Describe a city as JSON:")
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}},
        "required": ["name"],
        "additionalProperties": False,
    }

    def fmt(s: dict[str, Any]) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": "city", "schema": s}}

    kw: dict[str, Any] = {"response_format": fmt(schema), "max_tokens": 24}
    miss, first = chat(client, prompt, **kw)
    hit, again = chat(client, prompt, **kw)
    assert (miss, hit) == ("miss", "hit")
    assert json.loads(first.choices[0].message.content)["name"] is not None
    same_answer(first, again)
    other = {**schema, "properties": {"name": {"type": "integer"}}}
    assert chat(client, prompt, response_format=fmt(other), max_tokens=24)[0] == "miss"


# -- what is cached ------------------------------------------------------------------------


def test_sampled_without_seed_bypasses_with_a_seed_hits(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    sampled = {"temperature": 1.0}
    assert [chat(client, prompt, **sampled)[0] for _ in range(2)] == ["bypass", "bypass"]
    seeded = {"temperature": 1.0, "seed": 1234}
    miss, first = chat(client, prompt, **seeded)
    hit, again = chat(client, prompt, **seeded)
    assert (miss, hit) == ("miss", "hit")
    same_answer(first, again)
    assert chat(client, prompt, temperature=1.0, seed=1235)[0] == "miss"


def test_no_store_and_no_cache(daemon: Daemon) -> None:
    client = daemon.client()
    prompt = fresh()
    # no-store: computed (and looked for), not kept.
    assert chat(client, prompt, extra_headers=NO_STORE)[0] == "miss"
    miss, first = chat(client, prompt)
    assert miss == "miss"
    assert chat(client, prompt, extra_headers=NO_STORE)[0] == "hit"  # reading is allowed
    # no-cache: not read although an entry exists; computed.
    assert chat(client, prompt, extra_headers=NO_CACHE)[0] == "bypass"
    assert chat(client, prompt, extra_headers={"Cache-Control": "no-cache, no-store"})[0] == (
        "bypass"
    )
    # no-cache's answer is kept: a plain request after it finds it.
    other = fresh()
    assert chat(client, other, extra_headers=NO_CACHE)[0] == "bypass"
    assert chat(client, other)[0] == "hit"


# -- scopes: keys, shared models and keys, keys kept out ----------------------------------

KEYED_CONFIG = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 512
parallel = 2

[auth]
failure_delay_s = 0.01

[cache]
keys = {{ offkey = "off", pooled = "shared" }}

[models.smollm2]
path = "{SMOL_FILE}"

[models.common]
path = "{SMOL_FILE}"
cache = "shared"

[models.uncached]
path = "{SMOL_FILE}"
cache = "off"
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, dict[str, str]]]:
    """A daemon with the keys alice, bob, offkey (cache off), pooled (shared scope), metered
    (request and token limits per minute) and root (admin)."""
    tmp = tmp_path_factory.mktemp("cache-keys")
    secrets = {
        name: add_key(tmp / "keys.toml", name)[1] for name in ("alice", "bob", "offkey", "pooled")
    }
    secrets["metered"] = add_key(tmp / "keys.toml", "metered", rpm=1000, tpm=100_000)[1]
    secrets["root"] = add_key(tmp / "keys.toml", "root", admin=True)[1]
    d = start_daemon(tmp, KEYED_CONFIG)
    yield d, secrets
    assert d.stop() == 0, d.logs()


def keyed_client(d: Daemon, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key=secret, max_retries=0)


def test_another_key_misses(keyed: tuple[Daemon, dict[str, str]]) -> None:
    d, secrets = keyed
    alice, bob = keyed_client(d, secrets["alice"]), keyed_client(d, secrets["bob"])
    prompt = fresh()
    assert chat(alice, prompt)[0] == "miss"
    assert chat(alice, prompt)[0] == "hit"
    assert chat(bob, prompt)[0] == "miss"
    assert chat(bob, prompt)[0] == "hit"


def test_a_key_with_the_cache_off_always_bypasses(keyed: tuple[Daemon, dict[str, str]]) -> None:
    d, secrets = keyed
    off = keyed_client(d, secrets["offkey"])
    prompt = fresh()
    assert [chat(off, prompt)[0] for _ in range(2)] == ["bypass", "bypass"]
    # Nor does what others keep reach it.
    alice = keyed_client(d, secrets["alice"])
    assert [chat(alice, prompt)[0] for _ in range(2)] == ["miss", "hit"]
    assert chat(off, prompt)[0] == "bypass"
    # A model with the cache off: every key bypasses.
    assert [chat(alice, prompt, model="uncached")[0] for _ in range(2)] == ["bypass", "bypass"]


def test_a_shared_model_and_a_shared_key(keyed: tuple[Daemon, dict[str, str]]) -> None:
    d, secrets = keyed
    alice, bob = keyed_client(d, secrets["alice"]), keyed_client(d, secrets["bob"])
    prompt = fresh()
    miss, first = chat(alice, prompt, model="common")
    hit, again = chat(bob, prompt, model="common")
    assert (miss, hit) == ("miss", "hit")
    same_answer(first, again)
    # A key filed under the shared scope reads the shared model's entries on any model of
    # the same file (its answers are the same), and keeps its own there for everyone's use.
    pooled = keyed_client(d, secrets["pooled"])
    assert chat(pooled, prompt)[0] == "hit"
    other = fresh()
    assert chat(pooled, other)[0] == "miss"
    assert chat(bob, other, model="common")[0] == "hit"
    # Bob's own scope on smollm2 is still his alone.
    assert chat(bob, other)[0] == "miss"


def test_a_hit_is_a_usage_record_marked_hit(keyed: tuple[Daemon, dict[str, str]]) -> None:
    d, secrets = keyed
    alice = keyed_client(d, secrets["alice"])
    prompt = fresh()
    sent = []
    for _ in range(2):
        raw = alice.chat.completions.with_raw_response.create(
            model=SMOL, messages=ask(prompt), max_tokens=12, **GREEDY
        )
        sent.append((raw.headers["x-request-id"], raw.headers[HEADER], raw.parse().usage))
    rows = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": "alice", "limit": 1000},
        headers=bearer(secrets["root"]),
        timeout=10,
    ).json()["data"]
    by_id = {row["request_id"]: row for row in rows}
    for request_id, header, usage in sent:
        row = by_id[request_id]
        assert (row["cache"], row["status"]) == (header, 200)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    assert [header for _, header, _ in sent] == ["miss", "hit"]
    grouped = httpx.get(
        d.url + "/api/v1/usage",
        params={"key": "alice", "group_by": "key"},
        headers=bearer(secrets["root"]),
        timeout=10,
    ).json()["data"]
    assert grouped[0]["cache_hits"] == sum(1 for row in rows if row["cache"] == "hit") > 0


def test_a_hit_counts_as_a_request_but_not_its_tokens(
    keyed: tuple[Daemon, dict[str, str]],
) -> None:
    """[cache] count_hit_tokens = false (the default): a hit takes one of the key's requests per
    minute and none of its tokens. Read from the x-ratelimit-* headers of a GET /v1/models
    after each answer (itself one request, no tokens): by then the answer has been charged."""
    d, secrets = keyed
    metered = keyed_client(d, secrets["metered"])
    prompt = fresh()

    def answer() -> tuple[str, int]:
        raw = metered.chat.completions.with_raw_response.create(
            model=SMOL, messages=ask(prompt), max_tokens=12, **GREEDY
        )
        return raw.headers[HEADER], raw.parse().usage.total_tokens

    def remaining() -> tuple[int, int]:
        raw = metered.models.with_raw_response.list()
        return (
            int(raw.headers["x-ratelimit-remaining-requests"]),
            int(raw.headers["x-ratelimit-remaining-tokens"]),
        )

    before = remaining()
    miss, used = answer()
    after_miss = remaining()
    hit, hit_used = answer()
    after_hit = remaining()
    assert (miss, hit) == ("miss", "hit")
    assert hit_used == used > 0, "the hit reports the stored usage"
    assert after_miss == (before[0] - 2, before[1] - used), "the miss is charged its tokens"
    assert after_hit == (after_miss[0] - 2, after_miss[1]), "the hit is a request, no tokens"


# -- a replaced model file -----------------------------------------------------------------


def _wait(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached in {seconds} s: {what}")


def _model(d: Daemon, name: str) -> dict[str, Any] | None:
    resp = httpx.get(d.url + "/api/v1/models", timeout=10)
    found = [m for m in resp.json()["models"] if m["name"] == name]
    return found[0] if found else None


def _copy_in(src: Path, dst: Path) -> None:
    """As an operator replaces a file: a copy under a hidden name, renamed into place."""
    tmp = dst.with_name("." + dst.name + ".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def test_a_replaced_model_file_misses(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    _copy_in(MODELS / SMOL_FILE, models_dir / SMOL_FILE)
    name = SMOL_FILE.removesuffix(".gguf")
    config = "[engine]\nctx_per_seq = 512\nparallel = 2\n"
    d = start_daemon(tmp_path / "d", config, wait_ready=False, models_dir=models_dir)
    try:
        _wait(lambda: _model(d, name), 60, "model listed")
        client = d.client()
        body: dict[str, Any] = {"model": name, "prompt": fresh("Once upon"), "max_tokens": 8}
        body.update(GREEDY)

        def complete() -> tuple[str | None, Any]:
            raw = client.completions.with_raw_response.create(**body)
            return raw.headers.get(HEADER), raw.parse()

        miss, old = complete()
        hit, _ = complete()
        assert (miss, hit) == ("miss", "hit")
        old_pid = _model(d, name)["pid"]  # type: ignore[index]
        # Another model's content under the same name: the same engine request, a new identity.
        _copy_in(MODELS / GEMMA_FILE, models_dir / SMOL_FILE)
        _wait(
            lambda: (
                (m := _model(d, name)) and m["pid"] not in (None, old_pid) and m["state"] == "ready"
            ),
            120,
            "the new version ready",
        )
        after, new = complete()
        assert after == "miss", "an answer of the replaced file was served"
        assert complete()[0] == "hit"
        assert new.usage != old.usage or new.choices != old.choices
    finally:
        d.stop()


def metrics(d: Daemon) -> dict[str, float]:
    """The daemon's unlabelled samples (the cache's gauges and counters) by name."""
    text = httpx.get(d.url + "/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def results(d: Daemon, model: str) -> dict[str, float]:
    """llmd_cache_requests_total of a model, by result (hit, miss, bypass)."""
    text = httpx.get(d.url + "/metrics", timeout=10).text
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llmd_cache_requests_total" and sample.labels.get("model") == model
    }


# -- the byte bound ------------------------------------------------------------------------


def test_the_byte_bound_evicts_the_least_recently_used(
    make_daemon: Callable[..., Daemon],
) -> None:
    """64 distinct embeddings (each input one entry of ~3.4 KB: 576 floats in base64, its
    key, its overhead) through a 32 KiB cache: the newest stay, the oldest went. Ten thousand
    go through a bound in the next test, on a model whose embeddings cost less."""
    d = make_daemon(
        f"""
[engine]
ctx_per_seq = 64
parallel = 16

[cache]
max_bytes = "32KiB"

[models.smollm2]
path = "{SMOL_FILE}"
"""
    )
    client = d.client(timeout=300)
    tag = uuid.uuid4().hex[:6]
    texts = [f"{tag} {i}" for i in range(64)]

    def embed(inputs: list[str]) -> str | None:
        raw = client.embeddings.with_raw_response.create(model=SMOL, input=inputs)
        raw.parse()
        return raw.headers.get(HEADER)

    assert embed(texts[:32]) == "miss"
    assert embed(texts[32:]) == "miss"
    stats = httpx.get(d.url + "/api/v1/cache", timeout=10).json()
    assert stats["backend"] == "memory" and stats["max_bytes"] == 32 * 1024
    assert 0 < stats["bytes"] <= stats["max_bytes"]
    assert stats["stored"] == 64 and stats["misses"] == 2
    assert 0 < stats["entries"] < 16
    assert stats["evictions"] == 64 - stats["entries"]
    # Prometheus reads the same.
    scraped = metrics(d)
    assert scraped["llmd_cache_bytes"] == stats["bytes"]
    assert scraped["llmd_cache_max_bytes"] == 32 * 1024
    assert scraped["llmd_cache_evictions_total"] == stats["evictions"]
    assert embed(texts[-4:]) == "hit", "the newest entries stay"
    assert embed(texts[:1]) == "miss", "the oldest entries went"
    assert embed(texts[32:33]) == "miss", "the bound holds a few entries, not 32"
    raw = client.embeddings.with_raw_response.create(
        model=SMOL, input=texts[-1:], extra_headers=NO_CACHE
    )
    assert raw.headers.get(HEADER) == "bypass"
    assert results(d, SMOL) == {"hit": 1, "miss": 4, "bypass": 1}


def test_the_byte_bound_holds_under_ten_thousand_entries(
    tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    """10,000 distinct answers through a 256 KiB cache, with the real daemon and llama.cpp:
    embeddings of a tiny BERT model (tests/tinybert.py, 32 dimensions), each input an entry of
    its own and cheap to compute (SmolLM2's embeddings cost ~50 ms each on this box, as
    llama.cpp computes its 49k-word output layer for every input token)."""
    model = tinybert.write(tmp_path / "tiny-bert.gguf")
    d = make_daemon(
        f"""
[engine]
ctx_per_seq = 64
parallel = 16
[cache]
max_bytes = "256KiB"
[models.tinybert]
path = "{model}"
"""
    )
    words, w = tinybert.WORDS, len(tinybert.WORDS)
    texts = [f"{words[i % w]} {words[i // w % w]} {words[i // w // w]}" for i in range(10_000)]
    assert len(set(texts)) == 10_000
    client = d.client(timeout=600)
    for at in range(0, 10_000, 2_000):
        raw = client.embeddings.with_raw_response.create(
            model="tinybert", input=texts[at : at + 2_000]
        )
        assert len(raw.parse().data) == 2_000 and raw.headers[HEADER] == "miss"
        stats = httpx.get(d.url + "/api/v1/cache", timeout=10).json()
        assert 0 < stats["bytes"] <= 256 * 1024, stats
    assert stats["stored"] == 10_000
    assert 100 < stats["entries"] < 2_000
    assert stats["evictions"] == 10_000 - stats["entries"]
    newest = client.embeddings.with_raw_response.create(model="tinybert", input=texts[-50:])
    assert newest.headers[HEADER] == "hit"
    oldest = client.embeddings.with_raw_response.create(model="tinybert", input=texts[:1])
    assert oldest.headers[HEADER] == "miss"
