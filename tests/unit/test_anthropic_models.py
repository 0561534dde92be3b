"""The model list in Anthropic's shape (llmd/protocol/anthropic_models.py): pages and cursors."""

from __future__ import annotations

import pytest

from llmd.errors import InvalidRequest
from llmd.protocol.anthropic_models import anthropic_model_info, anthropic_models_page

CARDS = [{"id": name, "created": 0} for name in ("a", "b", "c", "d")]


def ids(page: dict[str, object]) -> list[str]:
    return [m["id"] for m in page["data"]]  # type: ignore[attr-defined]


def test_pages_and_cursors() -> None:
    whole = anthropic_models_page(CARDS, {})
    assert ids(whole) == ["a", "b", "c", "d"] and not whole["has_more"]
    assert (whole["first_id"], whole["last_id"]) == ("a", "d")
    first = anthropic_models_page(CARDS, {"limit": "2"})
    assert ids(first) == ["a", "b"] and first["has_more"]
    assert ids(anthropic_models_page(CARDS, {"after_id": "b"})) == ["c", "d"]
    assert ids(anthropic_models_page(CARDS, {"before_id": "d", "limit": "2"})) == ["b", "c"]
    empty = anthropic_models_page([], {})
    assert empty == {"data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("query", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"after_id": "zz"}, "after_id")],
)
def test_a_bad_query_is_a_400_naming_it(query: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_models_page(CARDS, query)
    assert caught.value.param == field and caught.value.message.startswith(f"{field}: ")


def test_model_info_is_anthropics_shape() -> None:
    info = anthropic_model_info({"id": "m", "created": 86400})
    assert info == {
        "type": "model",
        "id": "m",
        "display_name": "m",
        "created_at": "1970-01-02T00:00:00Z",
        "lifecycle": "active",
    }
