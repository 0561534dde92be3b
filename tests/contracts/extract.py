"""Cut the schemas llmd's answers must match out of OpenAI's OpenAPI description.

    python -m tests.contracts.extract [PATH/TO/openapi.json]

reads OpenAI's published openapi.json (openai/openai-openapi, MIT) and writes
tests/contracts/openai.json: the response schemas named in ROOTS and, transitively, every schema
they `$ref`, copied unchanged under the same `#/components/schemas/...` paths so that their refs
resolve inside the smaller file. The whole description is 3.4 MB and not in the repository;
the cut is ~30 KB and is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "openai.json"
# Where the session's shared files put the full description; any other path may be given.
DEFAULT_SOURCE = Path("/work/shared/openai-openapi/openapi.json")
PREFIX = "#/components/schemas/"

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


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_SOURCE
    source = json.loads(path.read_text(encoding="utf-8"))
    cut = extract(source)
    # Compact, but one schema to a line, so that a regeneration's diff says which ones changed.
    schemas = cut["components"]["schemas"]
    head = {k: v for k, v in cut.items() if k != "components"}
    lines = [json.dumps(head, separators=(",", ":"))[:-1] + ',"components":{"schemas":{']
    items = [f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in schemas.items()]
    lines.append(",\n".join(items))
    lines.append("}}}\n")
    text = "\n".join(lines)
    assert json.loads(text) == cut
    OUT.write_text(text, encoding="utf-8")
    print(f"{OUT}: {len(schemas)} schemas, {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
