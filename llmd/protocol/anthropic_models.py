"""The model list as Anthropic's SDK reads it (`client.models.list()`, `models.retrieve`):
GET /v1/models and /v1/models/{id} answer in these shapes when the request carries the
`anthropic-version` header the SDK always sends; in OpenAI's otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from llmd.errors import InvalidRequest

ANTHROPIC_VERSION = "anthropic-version"
"""The header Anthropic's SDK sends with every request: GET /v1/models answers it in
Anthropic's shape (`client.models.list()`, `models.retrieve`)."""


def anthropic_model_info(card: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI model card (llmd/protocol/openai_bodies.model_card) as Anthropic's ModelInfo."""
    created = dt.datetime.fromtimestamp(card["created"], dt.UTC)
    return {
        "type": "model",
        "id": card["id"],
        "display_name": card["id"],
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "lifecycle": "active",
    }


def anthropic_models_page(cards: list[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of the model list, Anthropic's way: `limit` (1-1000, default 20), and
    `after_id` / `before_id` cursors."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise _invalid("limit", "must be an integer") from None
    if not 1 <= limit <= 1000:
        raise _invalid("limit", "must be between 1 and 1000")
    ids = [card["id"] for card in cards]
    start, end = 0, len(cards)
    for cursor in ("after_id", "before_id"):
        if cursor in query:
            if query[cursor] not in ids:
                raise _invalid(cursor, f"no model '{query[cursor]}' is listed")
            at = ids.index(query[cursor])
            start, end = (at + 1, end) if cursor == "after_id" else (start, at)
    page = cards[start:end]
    page = page[-limit:] if "before_id" in query and "after_id" not in query else page[:limit]
    data = [anthropic_model_info(card) for card in page]
    return {
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(page) < end - start,
    }


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", param=field)
