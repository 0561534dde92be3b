"""POST /v1/embeddings end to end: the real daemon, the real models, the official client, and
the raw body against OpenAI's schema."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2 as httpx
import numpy as np
import openai
import pytest

from tests import tinybert
from tests.contracts import validate
from tests.e2e.conftest import GEMMA, MODELS, SMOL

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

CAT = "The cat sat on the mat."
# ~240 tokens: read over several engine steps (160 tokens a step for SmolLM2, 32 for Gemma-3),
# pooled as one.
LONG = (
    "Branch offices keep their own documents: contracts, price lists, service manuals and the "
    "minutes of every meeting. A local model answers questions about them without sending a "
    "word outside the building, and an embedding of each page lets staff search by meaning "
    "rather than by the exact words a page happens to use. "
) * 4


def _vec(item: Any) -> np.ndarray:
    return np.asarray(item.embedding, dtype=np.float64)


class Reference:
    """llama.cpp's own mean-pooled embeddings of a model, computed in this process."""

    def __init__(self, path: str) -> None:
        import llama_cpp as lc

        self.lc = lc
        params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(path.encode(), params)
        self.vocab = lc.llama_model_get_vocab(self.model)
        ctx = lc.llama_context_default_params()
        ctx.n_ctx = ctx.n_batch = ctx.n_ubatch = 512
        ctx.embeddings = True
        ctx.pooling_type = lc.LLAMA_POOLING_TYPE_MEAN
        self.ctx = lc.llama_init_from_model(self.model, ctx)
        self.n_embd = lc.llama_model_n_embd_out(self.model)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.lc.llama_token * (len(data) + 8))()
        add_bos = self.lc.llama_vocab_get_add_bos(self.vocab)
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_bos, True)
        return list(buf[:n])

    def embed(self, tokens: list[int]) -> np.ndarray:
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        batch = lc.llama_batch_init(len(tokens), 0, 1)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = len(tokens)
        assert lc.llama_decode(self.ctx, batch) == 0
        lc.llama_batch_free(batch)
        row = ctypes.cast(lc.llama_get_embeddings_seq(self.ctx, 0), ctypes.POINTER(ctypes.c_float))
        vector = np.ctypeslib.as_array(row, shape=(self.n_embd,)).astype(np.float64)
        return vector / np.linalg.norm(vector)

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="module")
def smol_reference() -> Iterator[Reference]:
    ref = Reference(str(MODELS / SMOL))
    yield ref
    ref.close()


@pytest.mark.parametrize(
    ("model", "file", "dims"), [("smollm2", SMOL, 576), ("gemma3-270m", GEMMA, 640)]
)
def test_embeddings_are_llama_cpps_mean_pooling(
    daemon: Daemon, client: openai.OpenAI, model: str, file: str, dims: int
) -> None:
    """The vector equals llama.cpp's own mean pooling of the whole input in one pass, though
    the daemon read it over several steps."""
    got = client.embeddings.create(model=model, input=[CAT, LONG], encoding_format="float")
    ref = Reference(str(MODELS / file))
    try:
        for item, text in zip(got.data, [CAT, LONG], strict=True):
            vector = _vec(item)
            assert vector.shape == (dims,)
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
            assert float(vector @ ref.embed(ref.tokenize(text))) > 0.999
        assert got.usage.prompt_tokens == sum(len(ref.tokenize(t)) for t in [CAT, LONG])
        assert got.usage.prompt_tokens > 200
        assert got.usage.total_tokens == got.usage.prompt_tokens
    finally:
        ref.close()


def test_sdk_default_base64_equals_float(daemon: Daemon, client: openai.OpenAI) -> None:
    b64 = client.embeddings.create(model="smollm2", input=CAT)  # the SDK asks for base64
    floats = client.embeddings.create(model="smollm2", input=CAT, encoding_format="float")
    assert b64.object == "list" and b64.model == "smollm2"
    assert b64.data[0].object == "embedding" and b64.data[0].index == 0
    assert np.allclose(_vec(b64.data[0]), _vec(floats.data[0]), atol=1e-7)
    # On the wire: base64 of little-endian float32, as OpenAI sends it.
    raw = httpx.post(
        daemon.url + "/v1/embeddings",
        json={"model": "smollm2", "input": CAT, "encoding_format": "base64"},
        timeout=60,
    ).json()
    wire = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4")
    assert np.allclose(wire, _vec(floats.data[0]), atol=1e-7)


def test_float_body_matches_openai_schema(daemon: Daemon) -> None:
    """As OpenAI's CreateEmbeddingResponse says. Only floats: its schema has `embedding` an
    array of numbers, while OpenAI itself (and llmd) send base64 as a string."""
    body = {"model": "smollm2", "input": [CAT, "a dog"], "encoding_format": "float"}
    resp = httpx.post(daemon.url + "/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert len(answer["data"]) == 2 and len(answer["data"][1]["embedding"]) == 576
    validate("CreateEmbeddingResponse", answer)


def test_inputs_keep_their_order_and_meaning(
    daemon: Daemon, client: openai.OpenAI, smol_reference: Reference
) -> None:
    texts = [
        CAT,
        "Quarterly revenue grew four percent on higher service sales.",
        "A cat was sitting on the mat.",
        CAT,
    ]
    got = client.embeddings.create(model="smol", input=texts, encoding_format="float")
    assert [item.index for item in got.data] == [0, 1, 2, 3]
    v = [_vec(item) for item in got.data]
    assert float(v[0] @ v[3]) > 0.99999  # the same text, read in different slots
    assert float(v[0] @ v[2]) > float(v[0] @ v[1]) + 0.1  # nearer in meaning, nearer here
    tokens = smol_reference.tokenize(texts[1])
    by_ids = client.embeddings.create(model="smollm2", input=[tokens], encoding_format="float")
    assert float(_vec(by_ids.data[0]) @ v[1]) > 0.99999
    assert by_ids.usage.prompt_tokens == len(tokens)


def test_dimensions_shorten_and_renormalize(daemon: Daemon, client: openai.OpenAI) -> None:
    full = _vec(
        client.embeddings.create(model="smollm2", input=CAT, encoding_format="float").data[0]
    )
    short = client.embeddings.create(model="smollm2", input=CAT, dimensions=64)
    vector = _vec(short.data[0])
    assert vector.shape == (64,)
    assert np.allclose(vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_more_inputs_than_slots_and_queue(daemon: Daemon, client: openai.OpenAI) -> None:
    """60 inputs with 16 slots and a queue of 32: fed a slot's worth at a time, none refused."""
    texts = [f"Ticket {i}: the printer on floor {i % 5} is out of toner." for i in range(60)]
    got = client.embeddings.create(model="smollm2", input=texts, encoding_format="float")
    assert [item.index for item in got.data] == list(range(60))
    alone = client.embeddings.create(model="smollm2", input=texts[37])
    assert float(_vec(got.data[37]) @ _vec(alone.data[0])) > 0.99999
    assert float(_vec(got.data[37]) @ _vec(got.data[38])) < 0.99999


def test_embeddings_alongside_chat_streams(daemon: Daemon) -> None:
    """Embedding steps mixed into running decodes change no generated token."""

    async def chat(client: openai.AsyncOpenAI) -> str:
        r = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Write a short poem about the sea."}],
            temperature=0,
            max_tokens=60,
        )
        return r.choices[0].message.content or ""

    async def embed(client: openai.AsyncOpenAI) -> Any:
        return await client.embeddings.create(model="smollm2", input=[LONG] * 6)

    async def run() -> tuple[str, list[Any]]:
        client = daemon.async_client()
        try:
            solo = await chat(client)
            together = await asyncio.wait_for(
                asyncio.gather(chat(client), embed(client), chat(client), embed(client)), 150
            )
            return solo, list(together)
        finally:
            await client.close()

    solo, together = asyncio.run(run())
    assert together[0] == solo and together[2] == solo
    assert len(together[1].data) == 6 and len(together[3].data) == 6


def test_embedding_input_longer_than_the_context(daemon: Daemon, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2", input="word " * 1500)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert "1024" in error["message"]


def test_client_gone_frees_the_slots(daemon: Daemon) -> None:
    """100 long inputs are ~90 s of work; a client that gives up after 2 s takes it all away."""
    body = {"model": "smollm2", "input": [LONG + str(i) for i in range(100)]}
    with httpx.Client(timeout=2) as http, pytest.raises(httpx.ReadTimeout):
        http.post(daemon.url + "/v1/embeddings", json=body)
    deadline = time.monotonic() + 10
    while True:
        models: list[dict[str, Any]] = daemon.health()["models"]  # type: ignore[assignment]
        smol = next(m for m in models if m["name"] == "smollm2")
        if smol["requests_in_flight"] == 0 and smol["running"] == 0 and smol["queued"] == 0:
            break
        assert time.monotonic() < deadline, smol
        time.sleep(0.1)
    with daemon.client() as client:
        assert len(client.embeddings.create(model="smollm2", input=CAT).data) == 1


# -- an encoder-only embedding model (BERT family) ------------------------------------------


def _bert_reference(path: Path, texts: list[str], pooling: int) -> list[np.ndarray]:
    """llama.cpp's own pooling for a BERT model: the whole input encoded in one pass."""
    import llama_cpp as lc

    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    params = lc.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 64
    params.embeddings = True
    params.pooling_type = pooling
    ctx = lc.llama_init_from_model(model, params)
    out = []
    for text in texts:
        data = text.encode()
        buf = (lc.llama_token * 64)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, 64, True, True)
        batch = lc.llama_batch_init(n, 0, 1)
        for i in range(n):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = buf[i], i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, True
        batch.n_tokens = n
        assert lc.llama_decode(ctx, batch) == 0
        lc.llama_batch_free(batch)
        row = ctypes.cast(lc.llama_get_embeddings_seq(ctx, 0), ctypes.POINTER(ctypes.c_float))
        vector = np.ctypeslib.as_array(row, shape=(tinybert.N_EMBD,)).astype(np.float64)
        out.append(vector / np.linalg.norm(vector))
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return out


def test_encoder_only_embedding_model(tmp_path: Path, make_daemon: Callable[..., Daemon]) -> None:
    """A BERT-family GGUF is served for embeddings only: each input read whole in one step,
    several inputs in one batch, pooled as the file says; generation is a clear 400."""
    mean = tinybert.write(tmp_path / "tiny-bert.gguf")
    cls = tinybert.write(tmp_path / "tiny-bert-cls.gguf", pooling=2)
    d = make_daemon(
        f"""
[server]
default_model = "tinybert"
[engine]
ctx_per_seq = 1024
parallel = 4
[models.tinybert]
path = "{mean}"
[models.tinybert-cls]
path = "{cls}"
"""
    )
    texts = ["the cat sat on the mat", "the printer on the floor is out of toner", "a dog"]
    with d.client() as client:
        for name, path, pooling in (("tinybert", mean, 1), ("tinybert-cls", cls, 2)):
            got = client.embeddings.create(model=name, input=texts, encoding_format="float")
            vectors = [_vec(item) for item in got.data]
            assert [v.shape for v in vectors] == [(tinybert.N_EMBD,)] * 3
            expected = _bert_reference(path, texts, pooling)
            for vector, reference in zip(vectors, expected, strict=True):
                assert float(vector @ reference) > 0.9999
            # [CLS] and [SEP] count, as OpenAI-compatible servers count them.
            assert got.usage.prompt_tokens == 8 + 11 + 4
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tinybert", prompt="the cat", max_tokens=4)
        assert "embedding model" in str(info.value)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="tinybert", messages=[{"role": "user", "content": "hi"}]
            )
        # Its positions end at the trained context (64), whatever ctx_per_seq says.
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="tinybert", input="cat " * 80)
        assert isinstance(info.value.body, dict)
        assert info.value.body["code"] == "context_length_exceeded"
    models: list[dict[str, Any]] = d.health()["models"]  # type: ignore[assignment]
    bert = next(m for m in models if m["name"] == "tinybert")
    assert bert["state"] == "ready" and bert["restarts"] == 0
    assert bert["ctx_per_seq"] == 64  # the trained context, not the configured 1,024
