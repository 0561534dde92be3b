"""OpenAI's response shapes (chat completions, completions, embeddings, models): plain dicts
built by these functions, because streaming builds one per token and these keep that cheap.
"""

from __future__ import annotations

import array
import base64
import math
import sys
import time
from typing import Any

from llmd import __version__
from llmd.engine.messages import TokenLogprob

FINGERPRINT = f"llmd-{__version__}"
"""OpenAI's `system_fingerprint` (a string in its schemas, never null): the server's build."""


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


def envelope(
    object_: str,
    id_: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    include_usage: bool,
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A response body or one SSE chunk ("chat.completion", "chat.completion.chunk",
    "text_completion"): the same fields around different choices."""
    chunk: dict[str, Any] = {
        "id": id_,
        "object": object_,
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = usage_  # null on every chunk but the last, as OpenAI sends it
    return chunk


def embeddings_body(
    vectors: list[bytes], model: str, prompt_tokens: int, encoding: str, dimensions: int | None
) -> dict[str, Any]:
    """The /v1/embeddings response. `vectors` are unit-length float32 bytes; `dimensions`
    keeps the first that many components and scales them back to unit length (as OpenAI's
    text-embedding-3 models shorten theirs); base64 is of the float32 bytes, little-endian,
    which is what the official SDK asks for by default and decodes."""
    data = []
    for index, raw in enumerate(vectors):
        # array, not numpy: the daemon process stays free of numpy (~20 MB); vectors are small.
        vector = array.array("f", raw)
        if sys.byteorder == "big":
            vector.byteswap()
        if dimensions is not None and dimensions < len(vector):
            norm = math.sqrt(math.fsum(x * x for x in vector[:dimensions])) or 1.0
            vector = array.array("f", (x / norm for x in vector[:dimensions]))
        embedding: Any = vector.tolist()
        if encoding == "base64":
            if sys.byteorder == "big":
                vector.byteswap()
            embedding = base64.b64encode(vector.tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(name: str, created: int, state: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmd", "state": state}
