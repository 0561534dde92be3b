"""The serving layer: an API request in, engine requests out, OpenAI shapes back.

Route → serving → engine client, as in vLLM's `entrypoints/openai`: the route handlers
(llmd/server/app.py) parse the body into a protocol type and hand it to the endpoint's
serving object; one module per endpoint (`chat`, `completions`, `embeddings`) on a shared
base (`base`: the model lease, the checks that need model facts, following the engine's
events), and one SSE writer (`sse`) for every stream.
"""

from __future__ import annotations

from typing import Any

from llmd.serving.base import ServingBase
from llmd.serving.chat import ServingChat
from llmd.serving.completions import ServingCompletions
from llmd.serving.embeddings import ServingEmbeddings
from llmd.settings import Settings


class Serving:
    """Every endpoint's serving object, built once per app and sharing its settings."""

    def __init__(self, settings: Settings) -> None:
        self.chat = ServingChat(settings)
        self.completions = ServingCompletions(settings)
        self.embeddings = ServingEmbeddings(settings)

    @property
    def settings(self) -> Settings:
        return self.chat.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        endpoints: tuple[ServingBase[Any], ...] = (self.chat, self.completions, self.embeddings)
        for endpoint in endpoints:
            endpoint.settings = settings
