"""Structured output in the engine: a request's grammar written as GBNF and checked before
llama.cpp sees it (`compile_grammar`), and what the sampler asks a loaded grammar about the
model's picks (`allows`, `best_allowed`, `redraw`).

The checks exist because llama.cpp takes the whole daemon's model process down on a grammar it
cannot handle (a stack overflow, an abort), and every other request on that model with it.
The questions are asked one token at a time because filtering the whole vocabulary through a
grammar costs ~7 ms per token for SmolLM2, checking one token ~5 us (llmd/engine/llama.py).
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp as lc
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, BuiltinRule, SchemaConverter

from llmd.engine.capture import pass_on, stderr_captured
from llmd.engine.messages import Grammar

GRAMMAR_TRIES = 32
"""Under a grammar, how many of the model's likely picks are checked one by one before the
whole vocabulary is filtered."""
MAX_GRAMMAR_NESTING = 4096
"""Deepest nesting of parenthesized groups accepted in a grammar (see `compile_grammar`)."""
MAX_GBNF_CHARS = 8_000_000
"""Longest grammar handed to llama.cpp's parser (a schema written as GBNF grows ~8x)."""


_PARSE_ERROR = "error parsing grammar: "
_REASON_CHARS = 300
"""The parser's reason quotes the grammar from where it failed: that much goes to the client."""


class GrammarError(Exception):
    """A grammar that cannot be used, and why (a message for the client)."""


def compile_grammar(vocab: Any, grammar: Grammar) -> str | None:
    """Write `grammar.gbnf` and check that llama.cpp accepts it for `vocab`; else say why not."""
    try:
        gbnf = write_gbnf(grammar)
    except GrammarError as exc:
        return str(exc)
    if len(gbnf) > MAX_GBNF_CHARS:
        return (
            f"The grammar is {len(gbnf)} characters long once written as GBNF; at most "
            f"{MAX_GBNF_CHARS} are supported."
        )
    depth = _nesting(gbnf)
    if depth > MAX_GRAMMAR_NESTING:
        # llama.cpp parses groups recursively: ~18,000 levels overflow the thread's
        # 8 MB stack and kill the process, every other request on this model with it.
        # (A JSON schema's maxLength N nests N levels.)
        return (
            f"The grammar nests groups {depth} levels deep; at most "
            f"{MAX_GRAMMAR_NESTING} are supported (a JSON schema's maxLength counts as "
            "that many levels)."
        )
    # The parser prints its reason and the whole grammar (request text) to stderr itself:
    # caught, the reason goes to the client alone; the log callback's line says only
    # "failed to parse grammar".
    with stderr_captured() as caught:
        sampler = lc.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    reason, other = _parser_error(caught.text, gbnf)
    pass_on(other)
    if not sampler:
        if reason:
            return f"The grammar could not be parsed as GBNF: {reason}"
        return "The grammar could not be parsed as GBNF, or its rule 'root' is missing."
    lc.llama_sampler_free(sampler)
    grammar.gbnf = gbnf
    return None


def _parser_error(text: str, gbnf: str) -> tuple[str, str]:
    """(the parser's reason, shortened; the rest of `text`) from what llama.cpp's GBNF parser
    printed: "parse: error parsing grammar: REASON\\n\\nGRAMMAR\\n"."""
    at = text.find(_PARSE_ERROR)
    if at < 0:
        return "", text
    start = text.rfind("\n", 0, at) + 1
    tail = f"\n\n{gbnf}\n"
    end = text.find(tail, at)
    if end < 0:  # not as printed so far: hold all of it back, it may quote the grammar
        return "", text[:start]
    reason = text[at + len(_PARSE_ERROR) : end].strip()
    if len(reason) > _REASON_CHARS:
        reason = reason[:_REASON_CHARS] + "..."
    return reason, text[:start] + text[end + len(tail) :]


def write_gbnf(grammar: Grammar) -> str:
    """The grammar as GBNF, with its start rule `root`."""
    if grammar.kind == "json_object":
        return str(JSON_GBNF)
    if grammar.kind == "json_schema":
        return _schema_gbnf(grammar.source, "This JSON schema")
    if grammar.kind == "tool_calls":
        return _tool_calls_gbnf(grammar)
    return grammar.source


def _schema_gbnf(source: str, what: str) -> str:
    _check_counts(json.loads(source), what)
    converter = _new_converter()
    try:
        converter.visit(converter.resolve_refs(json.loads(source), "stdin"), "")
        return str(converter.format_grammar())
    except Exception as exc:  # noqa: BLE001 - the converter raises assertions too
        raise GrammarError(f"{what} cannot be followed: {exc}") from None


MAX_ENUMERATED_INTEGERS = 4096
"""An integer range of at most this many values is written out as their list."""


_JSON_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])",
    [],
)
"""One character of a JSON string: as llama-cpp-python's converter writes it, but refusing the
control characters JSON refuses (its rule, `[^"\\]`, let a raw line break into a string:
invalid JSON in a tool call's arguments, seen with Gemma-3 at temperature 1)."""


class _Converter(SchemaConverter):
    """llama.cpp's converter, holding integers to `minimum` / `maximum` too (it ignores them):
    a range of up to MAX_ENUMERATED_INTEGERS values is written out; a lower bound of 0 alone
    refuses the minus sign. Other numeric bounds stay unheld (docs/tools.md says which).
    Strings refuse control characters (`_JSON_CHAR`)."""

    def _add_primitive(self, name: str, rule: Any) -> Any:
        if name == "char":  # the converter's own lets control characters into strings
            rule = _JSON_CHAR
        return super()._add_primitive(name, rule)

    def visit(self, schema: Any, name: str) -> Any:
        rule = _integer_range(schema) if isinstance(schema, dict) else None
        if rule is None:
            return super().visit(schema, name)  # type: ignore[no-untyped-call]
        return self._add_rule(name or "root", rule)  # type: ignore[no-untyped-call]


def _new_converter() -> Any:
    return _Converter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )


def _integer_range(schema: dict[str, Any]) -> str | None:
    """A GBNF rule for an integer schema's bounds, or None to leave it to the converter."""
    if schema.get("type") != "integer":
        return None
    lows = [b for b in (_bound(schema, "minimum"), _bound(schema, "exclusiveMinimum")) if b]
    highs = [b for b in (_bound(schema, "maximum"), _bound(schema, "exclusiveMaximum")) if b]
    low = max(b[0] for b in lows) if lows else None
    high = min(b[0] for b in highs) if highs else None
    if low is not None and high is not None and 0 <= high - low < MAX_ENUMERATED_INTEGERS:
        return "(" + " | ".join(f'"{n}"' for n in range(low, high + 1)) + ") space"
    if low == 0 and high is None:
        return '("0" | [1-9] [0-9]{0,15}) space'
    return None


def _bound(schema: dict[str, Any], key: str) -> tuple[int] | None:
    """The integer bound `key` sets (exclusive ones moved inward), if it is a number."""
    value = schema.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if key == "minimum":
        return (math.ceil(value),)
    if key == "maximum":
        return (math.floor(value),)
    if key == "exclusiveMinimum":
        return (math.floor(value) + 1,)
    return (math.ceil(value) - 1,)


_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_PATTERN_COUNT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _check_counts(schema: Any, what: str) -> None:
    """Refuse repetition counts above MAX_GRAMMAR_NESTING before the converter sees them: it
    writes a count of N out N times (~5 characters each), so `minLength: 10**9` took the engine
    thread for over a minute, and the model process with it, before the grammar's size could be
    checked. Past this bound the grammar would be refused for its nesting anyway."""
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        counts = [(k, node[k]) for k in _COUNTS if isinstance(node.get(k), int | float)]
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for match in _PATTERN_COUNT.finditer(pattern):
                counts += [("pattern", int(n)) for n in match.groups() if n]
        for key, value in counts:
            if value > MAX_GRAMMAR_NESTING:
                raise GrammarError(
                    f"{what} asks for {key} {value}; at most {MAX_GRAMMAR_NESTING} repetitions "
                    "can be held to a grammar."
                )
        todo.extend(node.values())


def _tool_calls_gbnf(grammar: Grammar) -> str:
    """Calls written as `opening {"name": NAME, "arguments": ARGS} closing`, ARGS held to the
    named function's parameter schema; one call or several (`parallel`), or else the
    `answer` (response_format's JSON). One converter writes every schema, so the rules they
    share (strings, numbers, `space`) are written once; each schema's `$ref`s are resolved
    on their own, so one tool's `#/$defs/...` never meets another's."""
    converter = _new_converter()
    name_key, arguments_key = _literal('"name"'), _literal('"arguments"')
    calls = []
    for i, tool in enumerate(grammar.tools):
        arguments = _visit(converter, tool.parameters, f"tool{i}", f"tool '{tool.name}'")
        name = _literal(json.dumps(tool.name))
        calls.append(
            f'"{{" space {name_key} space ":" space {name} space "," space '
            f'{arguments_key} space ":" space {arguments} space "}}"'
        )
    root = "tool-call (tool-ws tool-call)*" if grammar.parallel else "tool-call"
    if grammar.answer is not None:
        json_schema = grammar.answer.kind == "json_schema"
        answer = grammar.answer.source if json_schema else '{"type": "object"}'
        root += " | " + _visit(converter, answer, "answer", "response_format")
    call = " | ".join(f"( {c} )" for c in calls)
    return (
        f"root ::= {root}\n"
        f"tool-call ::= {_literal(grammar.opening)} tool-ws ( {call} ) tool-ws "
        f"{_literal(grammar.closing)}\n"
        # One line break or space around the markup, as call formats write it (the
        # converter's `space` allows one space only).
        "tool-ws ::= [ \\n]?\n"
        f"{converter.format_grammar()}"
    )


def _visit(converter: Any, schema: str, name: str, what: str) -> str:
    """Add a JSON schema's rules to `converter`; the name of its start rule."""
    _check_counts(json.loads(schema), f"The JSON schema of {what}")
    try:
        resolved = converter.resolve_refs(json.loads(schema), name)
        return str(converter.visit(resolved, name))
    except Exception as exc:  # noqa: BLE001 - the converter raises assertions too
        raise GrammarError(f"The JSON schema of {what} cannot be followed: {exc}") from None


def _literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _nesting(gbnf: str) -> int:
    """How deep a GBNF grammar's parenthesized groups nest (outside literals, character
    classes and comments)."""
    depth = deepest = 0
    closing = ""  # the end of the literal or class we are in, if any
    escaped = False
    comment = False
    for ch in gbnf:
        if comment:
            comment = ch not in "\r\n"
        elif closing:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == closing:
                closing = ""
        elif ch in '"[':
            closing = '"' if ch == '"' else "]"
        elif ch == "#":
            comment = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def allows(grammar: Any, token: int) -> bool:
    """Whether the grammar (a llama.cpp grammar sampler) lets `token` come next."""
    one = lc.llama_token_data(token, 1.0, 0.0)
    check = lc.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
    lc.llama_sampler_apply(grammar, ctypes.byref(check))
    return bool(one.logit != -math.inf)


def best_allowed(grammar: Any, logits: Any) -> int | None:
    """Greedy under a grammar: the most likely allowed token, if one of the top few is.
    The same token as greedy after filtering the whole vocabulary (ties: lowest id)."""
    best = int(logits.argmax())  # mostly allowed: spare the partial sort
    if allows(grammar, best):
        return best
    tries = min(GRAMMAR_TRIES, len(logits) - 1)
    top = np.argpartition(-logits, tries)[:tries]
    for token in top[np.lexsort((top, -logits[top]))]:
        if allows(grammar, int(token)):
            return int(token)
    return None


def redraw(grammar: Any, draw: Callable[[], int]) -> int | None:
    """Sampling under a grammar: draw again (`draw`: one more token from the distribution the
    sampler just made) until the grammar allows a draw. Drawing until allowed samples exactly
    that distribution restricted to the allowed tokens."""
    for _ in range(GRAMMAR_TRIES):
        token = draw()
        if allows(grammar, token):
            return token
    return None


@dataclass
class Trigger:
    """A grammar that takes hold once the output writes its `opening` ("auto" tool calls: the
    model writes freely until it starts a call). `take` sees every token while the grammar
    waits; when a token completes the opening, a grammar sampler is started and fed the text
    from the opening on.

    llmd does this itself rather than with llama.cpp's lazy grammar, which aborts the whole
    model process when the token that completes the opening carries on into text the grammar
    refuses (`<tool_call` then `>.`): here such a token is replaced by the opening's next
    piece, which the grammar always allows."""

    vocab: Any
    grammar: Grammar
    tokenize: Callable[[str], list[int]]
    piece: Callable[[int], bytes]
    tail: bytes = b""
    """The output's last bytes: enough to hold all but the last byte of the opening."""

    def take(self, token: int, retry: bool = True) -> tuple[int, Any]:
        """The token to write (`token`, or the one replacing it) and, once the opening is
        written, the grammar sampler that holds the rest (else None)."""
        opening = self.grammar.opening.encode()
        text = self.tail + self.piece(token)
        start = text.find(opening)
        if start < 0:
            self.tail = text[max(0, len(text) - len(opening) + 1) :]
            return token, None
        held = self._hold(text[start:])
        if held is not None or not retry:
            return token, held
        need = text[: start + len(opening)][len(self.tail) :]
        return self.take(self.tokenize(need.decode("utf-8", "replace"))[0], retry=False)

    def _hold(self, text: bytes) -> Any:
        """A grammar sampler fed `text` (the opening and what follows it), or None if the
        grammar refuses it."""
        try:
            tokens = self.tokenize(text.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        sampler = lc.llama_sampler_init_grammar(self.vocab, self.grammar.gbnf.encode(), b"root")
        for token in tokens:
            if not allows(sampler, token):
                lc.llama_sampler_free(sampler)
                return None
            lc.llama_sampler_accept(sampler, token)
        return sampler
