"""The API types, one module per API: what each accepts and the shapes it sends back.

- `openai`: OpenAI's chat completions, completions, embeddings (and the shared request
  parsing: a mistake becomes a 400 that names the parameter); `openai_bodies` the shapes
  sent back;
- `responses`: OpenAI's Responses API, translated onto a chat request (its input items in
  `response_items`);
- `anthropic`: Anthropic's Messages API, translated onto a chat request (`anthropic_models`:
  the model list as Anthropic's SDK reads it).

The Responses and Messages types turn into a `ChatCompletionRequest` in one method each, so
every API runs through the same serving code (llmd/serving/).
"""

from __future__ import annotations

from llmd.protocol.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ModelRequest,
    SamplingRequest,
)
from llmd.protocol.openai_bodies import (
    FINGERPRINT,
    chat_logprobs,
    completion_logprobs,
    embeddings_body,
    envelope,
    model_card,
    now,
    usage,
)

__all__ = [
    "FINGERPRINT",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ModelRequest",
    "SamplingRequest",
    "chat_logprobs",
    "completion_logprobs",
    "embeddings_body",
    "envelope",
    "model_card",
    "now",
    "usage",
]
