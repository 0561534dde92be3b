"""A request's prompt as tokens, and OpenAI's error for one that cannot fit the context."""

from __future__ import annotations

from llmd.engine.backend import Backend
from llmd.engine.messages import MAX_CHARS_PER_TOKEN, Failed, GenerateRequest


def prompt_tokens(
    backend: Backend, req: GenerateRequest, ctx_per_seq: int, add_bos: bool, bos: int, bos_text: str
) -> list[int] | Failed:
    """The request's prompt as tokens (`bos` alone for an empty one), or why it cannot fit.
    It only reads the vocabulary."""
    if not isinstance(req.prompt, str):
        return list(req.prompt) or [bos]
    limit = ctx_per_seq * MAX_CHARS_PER_TOKEN
    if len(req.prompt) > limit:
        why = (
            f"the prompt has {len(req.prompt)} characters, more than {limit} "
            f"({MAX_CHARS_PER_TOKEN} a token) could ever fit. Please reduce its length."
        )
        return too_long(req, ctx_per_seq, why, "input" if req.embed else req.prompt_param)
    # Chat templates usually write the BOS themselves; do not add a second one.
    written = bool(bos_text) and req.prompt.startswith(bos_text)
    add_bos = add_bos and not written
    if not req.text_spans:
        return backend.tokenize(req.prompt, add_bos) or [bos]
    tokens: list[int] = []
    for start, end, is_text in _segments(len(req.prompt), req.text_spans):
        # Client text is read as text: "<|im_end|>" in a message stays ten characters.
        part = backend.tokenize(req.prompt[start:end], add_bos, not is_text)
        tokens += part
        add_bos = False
    return tokens or [bos]


def too_long(req: GenerateRequest, ctx_per_seq: int, why: str, param: str) -> Failed:
    """OpenAI's context_length_exceeded error, in its words."""
    return Failed(
        req.id,
        400,
        f"This model's maximum context length is {ctx_per_seq} tokens. However, {why}",
        code="context_length_exceeded",
        param=param,
    )


def _segments(size: int, spans: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """[0, size) cut at the spans' edges: (start, end, inside a span)."""
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for start, end in sorted(spans):
        start, end = max(start, pos), min(end, size)
        if start >= end:
            continue
        if start > pos:
            out.append((pos, start, False))
        out.append((start, end, True))
        pos = end
    if pos < size:
        out.append((pos, size, False))
    return out
