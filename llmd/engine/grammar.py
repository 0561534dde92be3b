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
import math
from typing import Any

import llama_cpp as lc
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llmd.engine.messages import Grammar

GRAMMAR_TRIES = 32
"""Under a grammar, how many of the model's likely picks are checked one by one before the
whole vocabulary is filtered."""
MAX_GRAMMAR_NESTING = 4096
"""Deepest nesting of parenthesized groups accepted in a grammar (see `compile_grammar`)."""
MAX_GBNF_CHARS = 8_000_000
"""Longest grammar handed to llama.cpp's parser (a schema written as GBNF grows ~8x)."""


def compile_grammar(vocab: Any, grammar: Grammar) -> str | None:
    """Write `grammar.gbnf` and check that llama.cpp accepts it for `vocab`; else say why not."""
    if grammar.kind == "json_object":
        gbnf = JSON_GBNF
    elif grammar.kind == "json_schema":
        try:
            gbnf = json_schema_to_gbnf(grammar.source)
        except Exception as exc:  # noqa: BLE001 - the converter raises assertions too
            return f"This JSON schema cannot be followed: {exc}"
    else:
        gbnf = grammar.source
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
    sampler = lc.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        # llama.cpp logged the parser's reason as an error (the daemon's log has it).
        return "The grammar could not be parsed as GBNF, or its rule 'root' is missing."
    lc.llama_sampler_free(sampler)
    grammar.gbnf = gbnf
    return None


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


def redraw(grammar: Any, rng: Any, candidates: Any) -> int | None:
    """Sampling under a grammar: draw again from the distribution a sampler chain just made
    (`candidates`: its llama_token_data entries, as a numpy record array with `id` and `p`)
    until the grammar allows a draw. Drawing until allowed samples exactly that distribution
    restricted to the allowed tokens."""
    cumulative = np.cumsum(candidates["p"], dtype=np.float64)
    draws = rng.random(GRAMMAR_TRIES) * cumulative[-1]
    for i in np.searchsorted(cumulative, draws, side="right"):
        token = int(candidates["id"][min(int(i), len(candidates) - 1)])
        if allows(grammar, token):
            return token
    return None
