"""The serving layer: an API request in, engine requests out, the API's shapes back.

Route → serving → engine client, as in vLLM's `entrypoints/openai`: the route handlers
(llmd/server/app.py) parse the body into a protocol type and hand it to the endpoint's
serving object; one module per endpoint (`chat`, `completions`, `embeddings`, and the APIs
translated onto chat: `responses` for OpenAI's Responses, `messages` for Anthropic's
Messages and count_tokens) on a shared base (`base`: the model lease, the checks that need
model facts, following the engine's events), one answer reader for the translated APIs
(`answer`), and one SSE writer (`sse`) for every stream.
"""

from __future__ import annotations

from llmd.cache import ResponseCache
from llmd.serving.chat import ServingChat
from llmd.serving.completions import ServingCompletions
from llmd.serving.embeddings import ServingEmbeddings
from llmd.serving.messages import ServingCountTokens, ServingMessages
from llmd.serving.responses import ServingResponses
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider


class Serving:
    """Every endpoint's serving object, built once per app; each reads the settings in
    force from the one provider, so a reload reaches them all at once."""

    def __init__(self, provider: SettingsProvider, cache: ResponseCache) -> None:
        self._provider = provider
        self.cache = cache
        self.chat = ServingChat(provider, cache)
        self.completions = ServingCompletions(provider, cache)
        self.embeddings = ServingEmbeddings(provider, cache)
        self.messages = ServingMessages(provider, self.chat)
        self.count_tokens = ServingCountTokens(provider, cache)
        self.responses = ServingResponses(provider, self.chat)

    @property
    def settings(self) -> Settings:
        return self._provider.current
