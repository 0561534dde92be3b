"""The Responses API's input items: `message`, `function_call` and `function_call_output`,
checked one at a time (`parse_item`, a mistake a 400 naming the item's field), their text, and
the shape they are stored and listed in (`stored_item`). llmd/protocol/responses.py turns them
into a chat's messages.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmd.errors import InvalidRequest

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")
"""Content parts whose text is in their `text` field (a `refusal` part's is in `refusal`)."""
IGNORED_ITEMS = ("reasoning",)
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def model_error(exc: ValidationError, where: str) -> InvalidRequest:
    """pydantic's first error as a 400 naming the field below `where` (`input[2]`)."""
    err = exc.errors()[0]
    param = where
    for part in err["loc"]:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part not in ("str", "list[str]", "function-after[_check(), str]"):
            param += f".{part}" if param else str(part)
    msg = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {msg}", param=param)


# -- items -----------------------------------------------------------------------------------


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]
    id: str | None = None


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[dict[str, Any]]
    id: str | None = None


def text_of(content: str | list[dict[str, Any]], where: str) -> str:
    """The text of a message's (or a call output's) content: a string, or text parts."""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            continue
        if kind not in TEXT_PARTS:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported: llmd's models read text "
                "only (input_text, output_text).",
                param=f"{where}[{j}].type",
            )
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"A {kind} part needs its 'text' as a string.", param=f"{where}[{j}].text"
            )
        texts.append(part["text"])
    return "".join(texts)


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem


def parse_item(raw: Any, where: str) -> Item | None:
    """One input item, checked (None: an item we drop, such as `reasoning`). An item with a
    role and no type is a message, as the SDK's EasyInputMessage allows."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    kind = raw.get("type", "message" if "role" in raw else None)
    model: type[Item]
    if kind == "message":
        model = MessageItem
    elif kind == "function_call":
        model = FunctionCallItem
    elif kind == "function_call_output":
        model = FunctionCallOutputItem
    elif kind in IGNORED_ITEMS:
        return None
    elif kind is None:
        raise InvalidRequest(
            "An input item needs a 'type' (or a 'role', for a message).", param=f"{where}.type"
        )
    else:
        raise InvalidRequest(
            f"Input items of type {kind!r} are not supported: llmd takes message, "
            "function_call and function_call_output items.",
            param=f"{where}.type",
        )
    try:
        item = model.model_validate(raw)
    except ValidationError as exc:
        raise model_error(exc, where) from None
    if isinstance(item, MessageItem):
        text_of(item.content, f"{where}.content")
    elif isinstance(item, FunctionCallOutputItem):
        text_of(item.output, f"{where}.output")
    return item


def stored_item(item: Item) -> dict[str, Any]:
    """An input item as kept with a stored response (and listed by its input_items): with an
    id, its content as parts, as OpenAI lists them."""
    if isinstance(item, MessageItem):
        kind = "output_text" if item.role == "assistant" else "input_text"
        text = text_of(item.content, "content")
        out: dict[str, Any] = {
            "id": item.id or new_id(ID_PREFIXES["message"]),
            "type": "message",
            "role": item.role,
            "content": [{"type": kind, "text": text}],
            "status": "completed",
        }
        if item.role == "assistant":
            out["content"][0].update(annotations=[], logprobs=[])
        return out
    if isinstance(item, FunctionCallItem):
        return {
            "id": item.id or new_id(ID_PREFIXES["function_call"]),
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
            "status": "completed",
        }
    return {
        "id": item.id or new_id(ID_PREFIXES["function_call_output"]),
        "type": "function_call_output",
        "call_id": item.call_id,
        "output": text_of(item.output, "output"),
        "status": "completed",
    }
