"""The hostile-body table of tests/e2e/test_hostile_bodies.py (issue 19): what a careless
client or an attacker sends to llmd, one `Row` each, with the answer it must get.

ROWS: bodies for the OpenAI routes (huge strings, deep nesting, NaN and 1e400, invalid UTF-8,
lone surrogates, 50 MB bodies, wrong content types and encodings, tool-calling and
response_format junk); WRONG_TYPES: a wrong type in every field of the four request bodies;
ADMIN_ROWS: the model and usage admin routes' cousins; ANTHROPIC_ROWS: the Messages API's
(answered in Anthropic's error shape, its message starting with the field); HANGS and LISTING:
rows that once took a model process down or gave a 500; PARSER: what aiohttp's parser
refuses before any route (once a text/plain 400).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.api import SMOL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
MB = 1_000_000


@dataclass(frozen=True)
class Row:
    """One hostile request and the answer it must get: `status` (an error in OpenAI's shape
    from 400 up), naming `param` when given."""

    name: str
    route: str
    body: bytes | Callable[[], bytes]
    """The bytes sent; the huge ones made when the row runs, not when the tests are collected."""
    status: int = 400
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else self.body()


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return {**body, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": SMOL, "prompt": "hi", "max_tokens": 1, **fields}


def embedding(**fields: Any) -> dict[str, Any]:
    return {"model": SMOL, "input": "hi", **fields}


def response(**fields: Any) -> dict[str, Any]:
    return {"model": SMOL, "input": "hi", "max_output_tokens": 1, **fields}


def raw_chat(fields: bytes = b"", content: bytes = b'"hi"') -> bytes:
    """A chat body with `fields` and the message's `content` written into it as they are
    (1e400, -0, escapes, bytes that are not UTF-8)."""
    head = b'{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": '
    return head + content + b"}]" + (b", " + fields if fields else b"") + b"}"


def rf_schema(schema: Any) -> dict[str, Any]:
    return chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )


def tool(parameters: Any) -> dict[str, Any]:
    function = {"name": "f", "parameters": parameters}
    return chat(tools=[{"type": "function", "function": function}], tool_choice="required")


RECURSIVE = {
    "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
    "$ref": "#/$defs/n",
}
LOOP = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}


def gzip_bomb() -> bytes:
    return gzip.compress(b'{"a": "' + b"0" * 100 * MB + b'"}')


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GZIP = {"Content-Encoding": "gzip"}

ROWS = [
    # -- the body as bytes: empty, not an object, not JSON, not UTF-8 ----------------------
    Row("empty body", CHAT, b""),
    Row("whitespace body", CHAT, b" \n\t "),
    Row("JSON null", CHAT, b"null"),
    Row("JSON array", CHAT, b"[]"),
    Row("JSON string", CHAT, b'"hi"'),
    Row("JSON number", CHAT, b"1"),
    Row("truncated JSON", CHAT, b'{"model":'),
    Row("UTF-8 byte order mark", CHAT, b"\xef\xbb\xbf" + js(chat())),
    Row("invalid UTF-8 bytes", CHAT, raw_chat(content=b'"\xff\xfe\xc3"')),
    Row("overlong UTF-8", CHAT, raw_chat(content=b'"\xc0\xaf"')),
    Row("UTF-8-encoded surrogate", CHAT, raw_chat(content=b'"\xed\xa0\x80"')),
    Row("UTF-16 body", CHAT, json.dumps(chat()).encode("utf-16")),
    Row("raw control character in a string", CHAT, raw_chat(content=b'"a\x01b"')),
    Row("raw NUL in a string", CHAT, raw_chat(content=b'"a\x00b"')),
    Row("NUL between fields", CHAT, b'{"model": "smollm2",\x00 "max_tokens": 1}'),
    # -- nesting and non-finite numbers ------------------------------------------------------
    Row("[ x 100,000", CHAT, b"[" * 100_000),
    Row('{"a": x 100,000', CHAT, b'{"a":' * 100_000),
    Row("nesting x 100,000 in a message", CHAT, raw_chat(content=b"[" * 100_000)),
    Row("NaN", CHAT, raw_chat(b'"temperature": NaN')),
    Row("Infinity", CHAT, raw_chat(b'"temperature": Infinity')),
    Row("-Infinity", CHAT, raw_chat(b'"frequency_penalty": -Infinity')),
    Row("temperature 1e400", CHAT, raw_chat(b'"temperature": 1e400'), param="temperature"),
    Row("seed 1e400", CHAT, raw_chat(b'"seed": 1e400'), param="seed"),
    Row("n 1e400", CHAT, raw_chat(b'"n": 1e400'), param="n"),
    Row("max_tokens 1e400", CHAT, raw_chat(b'"max_tokens": 1e400'), param="max_tokens"),
    Row(
        "logit_bias value 1e400", CHAT, raw_chat(b'"logit_bias": {"1": 1e400}'), param="logit_bias"
    ),
    Row("keep_alive 1e400", CHAT, raw_chat(b'"keep_alive": 1e400'), param="keep_alive"),
    Row("max_tokens -0", CHAT, raw_chat(b'"max_tokens": -0'), param="max_tokens"),
    # -- numbers out of range ------------------------------------------------------------------
    Row("max_tokens 10**30", CHAT, js(chat(max_tokens=10**30))),
    Row("n 0", CHAT, js(chat(n=0)), param="n"),
    Row("n 129", CHAT, js(chat(n=129)), param="n"),
    Row("n above slots + queue", CHAT, js(chat(n=100)), param="n"),
    Row("prompts x n above slots + queue", COMPLETIONS, js(completion(prompt=["a"] * 50))),
    Row("top_logprobs 10**9", CHAT, js(chat(logprobs=True, top_logprobs=10**9))),
    Row("logit_bias token 10**20", CHAT, js(chat(logit_bias={str(10**20): 1})), param="logit_bias"),
    Row("logit_bias full-width digits", CHAT, js(chat(logit_bias={"１２": 1})), param="logit_bias"),
    Row("logit_bias bias 1e308", CHAT, js(chat(logit_bias={"1": 1e308})), param="logit_bias"),
    Row("seed 10**30 (any integer)", CHAT, js(chat(seed=10**30)), status=200),
    Row("top_k 10**30 (any integer)", CHAT, js(chat(top_k=10**30)), status=200),
    # -- huge strings and bodies ---------------------------------------------------------------
    Row(
        "30 MB message",
        CHAT,
        lambda: js(chat(messages=[{"role": "user", "content": "a" * 30 * MB}])),
    ),
    Row("30 MB prompt", COMPLETIONS, lambda: js(completion(prompt="a " * 15 * MB))),
    Row("30 MB embedding input", EMBEDDINGS, lambda: js(embedding(input="a" * 30 * MB))),
    Row("30 MB JSON schema", CHAT, lambda: js(rf_schema({"description": "x" * 30 * MB}))),
    Row(
        "30 MB tool description",
        CHAT,
        lambda: js(tool({"type": "object", "description": "x" * 30 * MB})),
    ),
    Row("30 MB stop string", CHAT, lambda: js(chat(stop=["x" * 30 * MB])), status=200),
    Row("30 MB unknown field", CHAT, lambda: js(chat(extra="x" * 30 * MB)), status=200),
    Row(
        "50 MB body",
        CHAT,
        lambda: js(chat(messages=[{"role": "user", "content": "a" * 50 * MB}])),
        status=413,
    ),
    Row(
        "gzip bomb (100 MB of JSON)",
        CHAT,
        gzip_bomb,
        status=413,
        headers={"Content-Encoding": "gzip"},
    ),
    Row(
        "100,000 messages",
        CHAT,
        lambda: js(chat(messages=[{"role": "user", "content": "hi"}] * 100_000)),
    ),
    # -- content types, encodings ------------------------------------------------------------
    Row("form content type", CHAT, js(chat()), headers=FORM),
    Row(
        "multipart content type", CHAT, js(chat()), headers={"Content-Type": "multipart/form-data"}
    ),
    Row("XML content type", CHAT, js(chat()), headers={"Content-Type": "application/xml"}),
    Row(
        "text/plain content type",
        CHAT,
        js(chat()),
        status=200,
        headers={"Content-Type": "text/plain"},
    ),
    Row(
        "unknown charset",
        CHAT,
        js(chat()),
        headers={"Content-Type": "application/json; charset=bogus"},
    ),
    Row("gzip that is not gzip", CHAT, b"not gzip" * 100, headers={"Content-Encoding": "gzip"}),
    Row("deflate that is not deflate", CHAT, b"no" * 100, headers={"Content-Encoding": "deflate"}),
    # -- text: control characters, NUL, lone surrogates --------------------------------------
    Row(
        "control characters in content",
        CHAT,
        js(chat(messages=[{"role": "user", "content": "\x01\x1b[31m\x7f"}])),
        status=200,
    ),
    Row(
        "NUL in content",
        CHAT,
        js(chat(messages=[{"role": "user", "content": "a\x00b"}])),
        status=200,
    ),
    Row("NUL in a stop string", CHAT, js(chat(stop=["\x00"])), status=200),
    Row("NUL in the model name", CHAT, js(chat(model="smol\x00lm2")), status=404, param="model"),
    Row("lone surrogate in content", CHAT, raw_chat(content=b'"a\\ud800b"'), status=200),
    Row("lone surrogate in a stop string", CHAT, raw_chat(b'"stop": ["\\udc00"]'), status=200),
    Row(
        "lone surrogate in a prompt",
        COMPLETIONS,
        b'{"model": "smollm2", "max_tokens": 1, "prompt": "\\ud800"}',
        status=200,
    ),
    Row(
        "lone surrogate in an input",
        EMBEDDINGS,
        b'{"model": "smollm2", "input": "\\ud800"}',
        status=200,
    ),
    Row(
        "lone surrogate in a grammar",
        CHAT,
        raw_chat(b'"grammar": "root ::= \\"\\ud800\\""'),
        param="grammar",
    ),
    Row(
        "lone surrogate as a logit_bias key",
        CHAT,
        raw_chat(b'"logit_bias": {"\\ud800": 1}'),
        param="logit_bias",
    ),
    Row(
        "lone surrogate as the model",
        CHAT,
        raw_chat(b'"model": "\\ud800"'),
        status=404,
        param="model",
    ),
    # -- messages ------------------------------------------------------------------------------
    Row("messages empty", CHAT, js(chat(messages=[])), param="messages"),
    Row("messages an object", CHAT, js(chat(messages={"role": "user"})), param="messages"),
    Row("role unknown", CHAT, js(chat(messages=[{"role": "wizard", "content": "hi"}]))),
    Row("role missing", CHAT, js(chat(messages=[{"content": "hi"}]))),
    Row(
        "image part",
        CHAT,
        js(
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            )
        ),
    ),
    Row(
        "tool result without its call",
        CHAT,
        js(chat(messages=[{"role": "tool", "tool_call_id": "c", "content": "x"}])),
    ),
    Row("17 stop strings", CHAT, js(chat(stop=["a"] * 17)), param="stop"),
    # -- tool calling junk ---------------------------------------------------------------------
    Row("tools an object", CHAT, js(chat(tools={"type": "function"})), param="tools"),
    Row("tools a string", CHAT, js(chat(tools="f")), param="tools"),
    Row("tool parameters not an object", CHAT, js(tool(7))),
    Row("tool schema with a recursive $ref", CHAT, js(tool(RECURSIVE)), param="tools"),
    Row("tool schema with a $ref loop", CHAT, js(tool(LOOP)), param="tools"),
    Row(
        "tool schema with a bad pattern",
        CHAT,
        js(tool({"type": "object", "properties": {"a": {"type": "string", "pattern": "[[["}}})),
        param="tools",
    ),
    Row(
        "tool_choice names no tool",
        CHAT,
        js(
            {
                **tool({"type": "object"}),
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            }
        ),
        param="tool_choice",
    ),
    Row(
        "tool_choice a number",
        CHAT,
        js({**tool({"type": "object"}), "tool_choice": 5}),
        param="tool_choice",
    ),
    Row(
        "1,000 tools",
        CHAT,
        js(
            chat(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": f"f{i}", "parameters": {"type": "object"}},
                    }
                    for i in range(1000)
                ]
            )
        ),
    ),
    Row(
        "grammar and tools",
        CHAT,
        js({**tool({"type": "object"}), "grammar": 'root ::= "a"'}),
        param="grammar",
    ),
    # -- response_format and grammar junk ------------------------------------------------------
    Row("response_format type xml", CHAT, js(chat(response_format={"type": "xml"}))),
    Row(
        "response_format a string", CHAT, js(chat(response_format="json")), param="response_format"
    ),
    Row(
        "json_schema missing",
        CHAT,
        js(chat(response_format={"type": "json_schema"})),
        param="response_format",
    ),
    Row(
        "schema not an object",
        CHAT,
        js(
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}})
        ),
    ),
    Row("schema type unknown", CHAT, js(rf_schema({"type": "banana"}))),
    Row("schema with a recursive $ref", CHAT, js(rf_schema(RECURSIVE))),
    Row("schema with a $ref loop", CHAT, js(rf_schema(LOOP))),
    Row("schema $ref to itself", CHAT, js(rf_schema({"$ref": "#"}))),
    Row("schema $ref to nothing", CHAT, js(rf_schema({"$ref": "#/$defs/nope"}))),
    Row("schema $ref to a URL", CHAT, js(rf_schema({"$ref": "http://example.com/s.json"}))),
    Row("schema properties a list", CHAT, js(rf_schema({"type": "object", "properties": [1, 2]}))),
    Row("schema enum empty", CHAT, js(rf_schema({"enum": []}))),
    Row("schema anyOf empty", CHAT, js(rf_schema({"anyOf": []}))),
    Row(
        "schema minItems 10**6",
        CHAT,
        js(rf_schema({"type": "array", "items": {"type": "integer"}, "minItems": 10**6})),
    ),
    Row("grammar not GBNF", CHAT, js(chat(grammar="root ::= (((")), param="grammar"),
    Row(
        "grammar left recursion", CHAT, js(chat(grammar='root ::= root "a" | "a"')), param="grammar"
    ),
    # -- completions and embeddings ------------------------------------------------------------
    Row("prompt empty list", COMPLETIONS, js(completion(prompt=[])), param="prompt"),
    Row("prompt [[]]", COMPLETIONS, js(completion(prompt=[[]])), param="prompt"),
    Row("prompt mixes text and ids", COMPLETIONS, js(completion(prompt=["a", 1])), param="prompt"),
    Row("prompt token id -1", COMPLETIONS, js(completion(prompt=[-1])), param="prompt"),
    Row("prompt token id 10**30", COMPLETIONS, js(completion(prompt=[10**30])), param="prompt"),
    Row("suffix", COMPLETIONS, js(completion(suffix="x")), param="suffix"),
    Row("input empty list", EMBEDDINGS, js(embedding(input=[])), param="input"),
    Row("input empty string", EMBEDDINGS, js(embedding(input=[""])), param="input"),
    Row("3,000 inputs", EMBEDDINGS, js(embedding(input=["a"] * 3000)), param="input"),
    Row("input token id 10**30", EMBEDDINGS, js(embedding(input=[10**30])), param="input"),
    Row("dimensions 0", EMBEDDINGS, js(embedding(dimensions=0)), param="dimensions"),
    Row("dimensions 10**30", EMBEDDINGS, js(embedding(dimensions=10**30)), param="dimensions"),
    Row(
        "encoding_format hex",
        EMBEDDINGS,
        js(embedding(encoding_format="hex")),
        param="encoding_format",
    ),
    # -- the Responses API ---------------------------------------------------------------------
    Row(
        "responses input 6 MB", RESPONSES, lambda: js(response(input="a " * 3 * MB)), param="input"
    ),
    Row(
        "responses input nested x 100,000",
        RESPONSES,
        b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    Row(
        "responses items of junk",
        RESPONSES,
        js(response(input=[1, None, "x"])),
        param="input[0]",
    ),
    Row(
        "responses item type unknown",
        RESPONSES,
        js(response(input=[{"type": "item_reference", "id": "x"}])),
        param="input[0].type",
    ),
    Row(
        "responses output answering no call",
        RESPONSES,
        js(response(input=[{"type": "function_call_output", "call_id": "c", "output": "o"}])),
        param="input[0].call_id",
    ),
    Row(
        "responses image part",
        RESPONSES,
        js(response(input=[{"role": "user", "content": [{"type": "input_image"}]}])),
        param="input[0].content[0].type",
    ),
    Row(
        "responses built-in tool",
        RESPONSES,
        js(response(tools=[{"type": "web_search"}])),
        param="tools[0].type",
    ),
    Row("responses background", RESPONSES, js(response(background=True)), param="background"),
    Row(
        "responses schema $ref to nothing",
        RESPONSES,
        js(
            response(
                text={"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "#/x"}}}
            )
        ),
    ),
    Row(
        "responses previous id unknown",
        RESPONSES,
        js(response(previous_response_id="resp_" + "9" * 10_000)),
        status=404,
        param="previous_response_id",
    ),
]

# A JSON schema whose repetition counts the converter writes out one by one: 10**9 takes
# minutes and gigabytes on the model's engine thread, the hang watchdog kills the process
# after 60 s, every request on the model gets a 503 meanwhile (reported with issue 19).
HANGS = [
    Row("schema minLength 10**9", CHAT, js(rf_schema({"type": "string", "minLength": 10**9}))),
    Row("schema maxLength 10**9", CHAT, js(rf_schema({"type": "string", "maxLength": 10**9}))),
]

# -- a wrong type in every field ---------------------------------------------------------------
# Each field of the four request bodies with a value of a type it never takes: an object (a
# list for the fields that take objects), and a scalar of the wrong kind.
OBJECT: Any = {"x": [1]}
TEXT_FIELDS = (
    "model user grammar suffix encoding_format stop prompt input instructions previous_response_id"
).split()
TAKES_OBJECTS = (
    "logit_bias response_format stream_options tool_choice function_call text metadata"
).split()
CHAT_FIELDS = (
    "model messages frequency_penalty logit_bias logprobs top_logprobs max_tokens "
    "max_completion_tokens n presence_penalty response_format seed stop stream stream_options "
    "temperature top_p tools tool_choice parallel_tool_calls user functions function_call top_k "
    "min_p repeat_penalty ignore_eos grammar keep_alive"
).split()
COMPLETION_FIELDS = "prompt echo logprobs suffix max_tokens n stop stream seed".split()
EMBEDDING_FIELDS = "model input encoding_format dimensions user keep_alive".split()
RESPONSES_FIELDS = (
    "model input instructions max_output_tokens temperature top_p tools tool_choice "
    "parallel_tool_calls text metadata user stream store previous_response_id keep_alive"
).split()


def wrong_values(name: str) -> list[Any]:
    values = [[1] if name in TAKES_OBJECTS else OBJECT]
    if name in TEXT_FIELDS or name in ("tool_choice", "function_call"):
        values.append(1.5)
    elif name != "keep_alive":  # seconds or a duration: any number or string is its type
        values.append("x")
    return values


WRONG_TYPES = [
    Row(f"{what} {name} = {json.dumps(value)}", route, js(make(**{name: value})), param=name)
    for what, route, make, fields in (
        ("chat", CHAT, chat, CHAT_FIELDS),
        ("completions", COMPLETIONS, completion, COMPLETION_FIELDS),
        ("embeddings", EMBEDDINGS, embedding, EMBEDDING_FIELDS),
        ("responses", RESPONSES, response, RESPONSES_FIELDS),
    )
    for name in fields
    for value in wrong_values(name)
]

# The admin routes' cousins: a query or body the model and usage APIs must refuse or serve.
ADMIN_ROWS = [
    Row("usage since=nan", "/api/v1/usage?since=nan", b"", param="since", method="GET"),
    Row("usage key not UTF-8", "/api/v1/usage?key=%ED%A0%80", b"", status=200, method="GET"),
    Row("usage group_by injection", "/api/v1/usage?group_by=key;drop", b"", method="GET"),
    Row("audit since not UTF-8", "/api/v1/audit?since=%FF%FE", b"", method="GET"),
    Row("keep_alive 1e400", "/api/v1/models/smollm2/keep_alive", b'{"keep_alive": 1e400}'),
    Row("keep_alive a list", "/api/v1/models/smollm2/keep_alive", js({"keep_alive": [1]})),
    Row("pin nested x 100,000", "/api/v1/models/smollm2/pin", b"[" * 100_000),
    Row("pin a string", "/api/v1/models/smollm2/pin", js({"pinned": "yes"}), param="pinned"),
    Row("load a JSON array", "/api/v1/models/smollm2/load", b"[]"),
    Row("load gzip that is not gzip", "/api/v1/models/smollm2/load", b"x" * 64, headers=GZIP),
]

# Refused by aiohttp's parser, before any route: answered in the error shape by the daemon's
# connection handler (llmd/server/wire.py); these were text/plain 400s.
PARSER = [
    Row("Content-Encoding br", CHAT, js(chat()), headers={"Content-Encoding": "br"}),
    Row("Content-Encoding zstd", CHAT, js(chat()), headers={"Content-Encoding": "zstd"}),
]
# Once 500s (the keys file could not be written as UTF-8): refused before a key is written.
KEYS = [
    Row(
        "key description lone surrogate",
        "/api/v1/keys",
        b'{"name": "k1", "description": "\\ud800"}',
    ),
    Row("key models lone surrogate", "/api/v1/keys", b'{"name": "k2", "models": ["\\udc00"]}'),
]
LISTING = [
    Row("usage limit 10**20", f"/api/v1/usage?limit={10**20}", b"", method="GET"),
    Row("audit limit 10**20", f"/api/v1/audit?limit={10**20}", b"", method="GET"),
]


MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


def message(**fields: Any) -> dict[str, Any]:
    body = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return {**body, **fields}


def user(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def raw_message(fields: bytes) -> bytes:
    head = b'{"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]'
    return head + b", " + fields + b"}"


ANTHROPIC_ROWS = [
    Row("messages: JSON array", MESSAGES, b"[]"),
    Row("messages: truncated JSON", MESSAGES, b'{"model":'),
    Row("messages: nesting x 100,000", MESSAGES, b'{"a":' * 100_000),
    Row("messages: 40 MB system", MESSAGES, lambda: js(message(system="x" * 40 * MB)), 413),
    Row(
        "messages: no max_tokens",
        MESSAGES,
        js({"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}),
        param="max_tokens",
    ),
    Row("messages: NaN temperature", MESSAGES, raw_message(b'"temperature": NaN')),
    Row(
        "messages: temperature 1e400",
        MESSAGES,
        raw_message(b'"temperature": 1e400'),
        param="temperature",
    ),
    Row("messages: temperature 2", MESSAGES, js(message(temperature=2)), param="temperature"),
    # A ceiling, cut to the context's room (agent clients send far more than fits).
    Row(
        "messages: max_tokens 10**30",
        MESSAGES,
        js(message(max_tokens=10**30, temperature=0)),
        status=200,
    ),
    Row("messages: messages a string", MESSAGES, js(message(messages="hi")), param="messages"),
    Row("messages: empty content", MESSAGES, js(message(messages=user())), param="messages.0"),
    Row(
        "messages: image block",
        MESSAGES,
        js(message(messages=user({"type": "image", "source": {"type": "url", "url": "x"}}))),
        param="messages.0.content.0.type",
    ),
    Row(
        "messages: block without a type",
        MESSAGES,
        js(message(messages=user({"text": "hi"}))),
        param="messages.0.content.0.type",
    ),
    Row(
        "messages: tool_result answering nothing",
        MESSAGES,
        js(message(messages=user({"type": "tool_result", "tool_use_id": "x", "content": "y"}))),
        param="messages.0.content.0.tool_use_id",
    ),
    Row(
        "messages: tool_use from the user",
        MESSAGES,
        js(message(messages=user({"type": "tool_use", "id": "x", "name": "f", "input": {}}))),
        param="messages.0.content.0.type",
    ),
    Row(
        "messages: server tool",
        MESSAGES,
        js(message(tools=[{"type": "web_search_20250305", "name": "web_search"}])),
        param="tools.0.type",
    ),
    Row("messages: tools an object", MESSAGES, js(message(tools={})), param="tools"),
    Row(
        "messages: tool input_schema an array",
        MESSAGES,
        js(message(tools=[{"name": "f", "input_schema": {"type": "array"}}])),
        param="tools.0.input_schema",
    ),
    Row(
        "messages: tool schema maxLength 10**9",
        MESSAGES,
        js(
            message(
                tools=[
                    {
                        "name": "f",
                        "input_schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string", "maxLength": 10**9}},
                        },
                    }
                ],
                tool_choice={"type": "any"},
            )
        ),
        param="tools",
    ),
    Row(
        "messages: tool_choice a string",
        MESSAGES,
        js(message(tool_choice="auto")),
        param="tool_choice",
    ),
    Row(
        "messages: 1,000 stop sequences",
        MESSAGES,
        js(message(stop_sequences=["x"] * 1000)),
        param="stop_sequences",
    ),
    Row("count_tokens: no messages", COUNT_TOKENS, js({"model": SMOL}), param="messages"),
    Row(
        "count_tokens: a 10 MB message",
        COUNT_TOKENS,
        lambda: js({"model": SMOL, "messages": [{"role": "user", "content": "word " * 2 * MB}]}),
        param="messages",
    ),
]
