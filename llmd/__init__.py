"""llmd: a lightweight local LLM daemon with an OpenAI-compatible API."""

__version__ = "0.1.0"
