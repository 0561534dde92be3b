"""Cut what llmd's tests need out of OpenAI's OpenAPI description.

    python -m tests.contracts.extract [PATH/TO/openapi.json]

reads OpenAI's published openapi.json (openai/openai-openapi, MIT) and writes two files:

- tests/contracts/openai.json: the response schemas named in ROOTS and, transitively, every
  schema they `$ref`, copied unchanged under the same `#/components/schemas/...` paths so that
  their refs resolve inside the smaller file (the contract tests);
- tests/contracts/openai-routes.json: the operations of ROUTES (the routes llmd serves under
  /v1) with every schema and response they `$ref`, a description schemathesis generates
  requests from (tests/e2e/test_fuzz.py). The operations are copied without `x-oaiMeta` (their
  code samples in eight languages, 30 KB that no tool reads).

The whole description is 3.4 MB and not in the repository; the cuts are ~30 and ~90 KB and are.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "openai.json"
ROUTES_OUT = HERE / "openai-routes.json"
# Where the session's shared files put the full description; any other path may be given.
DEFAULT_SOURCE = Path("/work/shared/openai-openapi/openapi.json")
PREFIX = "#/components/schemas/"
RESPONSES = "#/components/responses/"

# The shapes of what llmd sends: bodies, stream chunks, errors, the model list, tool calls.
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ErrorResponse",
    "ChatCompletionMessageToolCall",
    "ChatCompletionMessageToolCallChunk",
    "ListModelsResponse",
    # The Responses API: the Response, and the stream events llmd sends.
    "Response",
    "ResponseCreatedEvent",
    "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseContentPartAddedEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseContentPartDoneEvent",
    "ResponseFunctionCallArgumentsDeltaEvent",
    "ResponseFunctionCallArgumentsDoneEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseCompletedEvent",
    "ResponseIncompleteEvent",
    "ResponseFailedEvent",
)

# The operations llmd serves, by OpenAI's path (llmd serves them under the same /v1 base).
ROUTES = (
    ("/chat/completions", "post"),
    ("/completions", "post"),
    ("/embeddings", "post"),
    ("/models", "get"),
    ("/models/{model}", "get"),
    ("/responses", "post"),
    ("/responses/{response_id}", "get"),
    ("/responses/{response_id}", "delete"),
    ("/responses/{response_id}/input_items", "get"),
)


def refs(node: Any) -> Iterator[str]:
    """Every `$ref` value anywhere below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The named schemas and every schema they reach through `$ref`, sorted by name."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"schema {name!r} is not in the description")
        seen.add(name)
        for ref in refs(schemas[name]):
            # Only local component refs are expected; anything else would not resolve in the cut.
            if not ref.startswith(PREFIX):
                raise SystemExit(f"{name}: unexpected $ref {ref!r}")
            todo.append(ref.removeprefix(PREFIX))
    return {name: schemas[name] for name in sorted(seen)}


def component_refs(node: Any) -> tuple[set[str], set[str]]:
    """The schema and the response names `node` refers to."""
    schemas: set[str] = set()
    responses: set[str] = set()
    for ref in refs(node):
        if ref.startswith(PREFIX):
            schemas.add(ref.removeprefix(PREFIX))
        elif ref.startswith(RESPONSES):
            responses.add(ref.removeprefix(RESPONSES))
        else:
            raise SystemExit(f"unexpected $ref {ref!r}")
    return schemas, responses


def extract_routes(source: dict[str, Any]) -> dict[str, Any]:
    """The ROUTES operations and all they refer to: a description of llmd's /v1 routes."""
    paths: dict[str, Any] = {}
    for path, method in ROUTES:
        operation = dict(source["paths"][path][method])
        operation.pop("x-oaiMeta", None)
        paths.setdefault(path, {})[method] = operation
    components = source["components"]
    names, response_names = component_refs(paths)
    responses = {name: components["responses"][name] for name in sorted(response_names)}
    # A shared response's own refs (TooManyRequests: ErrorResponse) are roots too.
    names |= component_refs(responses)[0]
    info = source["info"]
    return {
        "openapi": source["openapi"],
        "info": {
            "title": f"{info['title']}: the routes llmd serves",
            "version": info["version"],
            "license": info.get("license", {"name": "MIT"}),
            "x-source": "openai/openai-openapi openapi.json; cut by tests/contracts/extract.py",
        },
        "servers": source["servers"],
        "security": source["security"],
        "paths": paths,
        "components": {
            "schemas": closure(components["schemas"], tuple(sorted(names))),
            "responses": responses,
            "securitySchemes": components["securitySchemes"],
        },
    }


def extract(source: dict[str, Any]) -> dict[str, Any]:
    info = source["info"]
    return {
        "openapi": source["openapi"],
        "info": {
            "title": f"{info['title']}: the response schemas llmd is tested against",
            "version": info["version"],
            "license": info.get("license", {"name": "MIT"}),
            "x-source": "openai/openai-openapi openapi.json; cut by tests/contracts/extract.py",
            "x-roots": list(ROOTS),
        },
        "components": {"schemas": closure(source["components"]["schemas"], ROOTS)},
    }


def dump(cut: dict[str, Any]) -> str:
    """Compact, but one schema (and one path) to a line, so that a regeneration's diff says
    which ones changed."""

    def lines(table: dict[str, Any]) -> str:
        return ",\n".join(
            f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in table.items()
        )

    components = cut["components"]
    head = {k: v for k, v in cut.items() if k not in ("paths", "components")}
    out = [json.dumps(head, separators=(",", ":"))[:-1]]
    if "paths" in cut:
        out.append(',"paths":{\n' + lines(cut["paths"]) + "\n}")
    out.append(',"components":{"schemas":{\n' + lines(components["schemas"]) + "\n}")
    rest = {k: v for k, v in components.items() if k != "schemas"}
    if rest:
        out.append("," + json.dumps(rest, separators=(",", ":"))[1:-1])
    out.append("}}\n")
    text = "".join(out)
    assert json.loads(text) == cut
    return text


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_SOURCE
    source = json.loads(path.read_text(encoding="utf-8"))
    for out, cut in ((OUT, extract(source)), (ROUTES_OUT, extract_routes(source))):
        text = dump(cut)
        out.write_text(text, encoding="utf-8")
        schemas = cut["components"]["schemas"]
        print(f"{out}: {len(schemas)} schemas, {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
