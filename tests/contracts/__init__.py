"""Check llmd's JSON against OpenAI's own schemas: validate(name, body) for a response body or
one stream chunk, validate_chat_stream / validate_completion_stream for every chunk of a stream.

The schemas are tests/contracts/openai.json, cut from OpenAI's OpenAPI 3.1 description by
extract.py. OpenAPI 3.1 schemas are JSON Schema 2020-12, except that a few of OpenAI's still
say `nullable: true` (the 3.0 spelling, which 2020-12 ignores); they are read here as "or null",
as the SDKs generated from them do, so that null passes where OpenAI sends null and nowhere else.

One schema (CompoundFilter, the file search tool's filters, reached from the Response's
`tools`, which llmd never sends) keeps draft 2019-09's `$recursiveAnchor: true` and
`$recursiveRef`; 2020-12 ignores `$recursiveRef` and its meta-schema wants `$recursiveAnchor` a
string, so `without_recursive_anchor` drops that flag for the meta-schema check.

One schema is ours, derived, not OpenAI's: COMPLETION_CHUNK. OpenAI's description says a
completions stream chunk has CreateCompletionResponse's shape, but that schema forbids the
`finish_reason: null` every chunk before the last carries (and the `usage: null` with
include_usage), which OpenAI's own API sends; the derived schema allows exactly those two nulls,
as CreateChatCompletionStreamResponse does for chat.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

FILE = Path(__file__).resolve().parent / "openai.json"
URI = "urn:llmd:openai-openapi"
# How much of a failing instance an AssertionError quotes.
QUOTE = 2000
COMPLETION_CHUNK = "CreateCompletionResponse.chunk"


def nullable_to_2020(node: Any) -> Any:
    """The schema with OpenAPI 3.0's `nullable: true` rewritten as a 2020-12 "or null"."""
    if isinstance(node, list):
        return [nullable_to_2020(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: nullable_to_2020(value) for key, value in node.items()}
    # A bool, not a schema: a property that happens to be called "nullable" holds a dict.
    if not isinstance(out.get("nullable"), bool):
        return out
    if not out.pop("nullable"):
        return out
    if isinstance(out.get("type"), str) and "$ref" not in out:
        # Widening type (and enum) keeps the error messages plain: "'done' is not one of [...]".
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}


def without_recursive_anchor(node: Any) -> Any:
    """The schema without draft 2019-09's boolean `$recursiveAnchor` (see the docstring)."""
    if isinstance(node, list):
        return [without_recursive_anchor(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: without_recursive_anchor(value)
        for key, value in node.items()
        if not (key == "$recursiveAnchor" and isinstance(value, bool))
    }


def completion_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """CreateCompletionResponse with a null finish_reason and a null usage allowed."""
    chunk = copy.deepcopy(response)
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["type"] = [reason["type"], "null"]
    reason["enum"] = [*reason["enum"], None]
    chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}
    return chunk


@cache
def registry() -> Registry[Any]:
    document = nullable_to_2020(json.loads(FILE.read_text(encoding="utf-8")))
    schemas = document["components"]["schemas"]
    schemas[COMPLETION_CHUNK] = completion_chunk(schemas["CreateCompletionResponse"])
    loaded: Registry[Any] = Registry().with_resource(URI, DRAFT202012.create_resource(document))
    return loaded


@cache
def validator(schema_name: str) -> Draft202012Validator:
    document = registry()[URI].contents
    if schema_name not in document["components"]["schemas"]:
        raise KeyError(f"{schema_name} is not in {FILE.name}; add it to extract.py's ROOTS")
    ref = {"$ref": f"{URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(ref, registry=registry())


def describe(error: ValidationError) -> str:
    """One line: where in the instance, and what is wrong there; for an anyOf / oneOf that no
    branch fits, what is wrong against each branch ("not valid under any" says nothing)."""
    if not error.context:
        return f"{error.json_path}: {error.message}"
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        # "X or null" given something else: that it is not null goes without saying.
        if not (sub.validator == "type" and sub.validator_value == "null"):
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    if not branches:
        return f"{error.json_path}: {error.message}"
    if len(branches) == 1:
        return describe(best_match(next(iter(branches.values()))))
    parts = [describe(best_match(subs)) for _, subs in sorted(branches.items())]
    return f"{error.json_path}: fits no branch of {error.validator}: " + " | ".join(parts)


def validate(schema_name: str, instance: Any) -> None:
    """Raise AssertionError naming every place `instance` departs from OpenAI's `schema_name`."""
    errors = sorted(validator(schema_name).iter_errors(instance), key=lambda e: list(e.path))
    if not errors:
        return
    quoted = json.dumps(instance, ensure_ascii=False)
    if len(quoted) > QUOTE:
        quoted = quoted[:QUOTE] + "…"
    lines = "\n".join(f"  {describe(e)}" for e in errors)
    raise AssertionError(f"not an OpenAI {schema_name}:\n{lines}\nin: {quoted}")


def validate_each(schema_name: str, instances: Iterable[Any], what: str = "chunk") -> None:
    """validate() every item, saying which one failed."""
    for i, instance in enumerate(instances):
        try:
            validate(schema_name, instance)
        except AssertionError as e:
            raise AssertionError(f"{what} {i}: {e}") from None


def validate_chat_stream(chunks: list[dict[str, Any]]) -> None:
    """Every chunk of a chat completion stream (the data lines before [DONE])."""
    assert chunks, "an empty stream"
    validate_each("CreateChatCompletionStreamResponse", chunks)


def validate_completion_stream(chunks: list[dict[str, Any]]) -> None:
    """Every chunk of a (legacy) completions stream (the data lines before [DONE])."""
    assert chunks, "an empty stream"
    validate_each(COMPLETION_CHUNK, chunks)


RESPONSE_EVENTS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
}
"""The Responses stream events llmd sends, by `type`, and their schemas."""


def validate_responses_stream(events: list[dict[str, Any]]) -> None:
    """Every event of a Responses stream, each against its type's schema."""
    assert events, "an empty stream"
    for i, event in enumerate(events):
        name = RESPONSE_EVENTS.get(event.get("type", ""))
        assert name is not None, f"event {i}: a type llmd does not send: {event.get('type')}"
        try:
            validate(name, event)
        except AssertionError as e:
            raise AssertionError(f"event {i}: {e}") from None
