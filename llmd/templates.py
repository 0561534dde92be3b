"""Chat templates: the model's own Jinja template, rendered in a sandbox.

GGUF files usually carry their chat template (`tokenizer.chat_template`). One that does not
(Gemma-3-270M is a base model) gets its architecture's known template from the table below;
with neither, chat requests get a clear 400 and completions keep working.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmd.errors import InvalidRequest

_GEMMA = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] in ('system', 'developer') %}"
    "{% set system.text = system.text + m['content'] + '\n\n' %}{% endif %}{% endfor %}"
    "{% set first = namespace(user=true) %}"
    "{% for m in messages %}{% if m['role'] not in ('system', 'developer') %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if role == 'user' and first.user %}{{ system.text }}{% set first.user = false %}"
    "{% endif %}{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
    "'<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Architectures whose chat format is fixed and known, for GGUF files that carry no template.
KNOWN_TEMPLATES = {
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,
    "gemma3n": _GEMMA,
    "qwen2": _CHATML,
    "qwen3": _CHATML,
}


def _raise(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, origin: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = lambda v, **kw: json.dumps(v, ensure_ascii=False, **kw)
        self.origin = origin
        self.source = source
        self._template = env.from_string(source)
        self._specials = {"bos_token": bos_token, "eos_token": eos_token}

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        specials: Sequence[str] = (),
    ) -> Prompt:
        """The prompt for `messages`; `tools` as Hugging Face's `apply_chat_template` passes
        them (for templates that render tools). Client text holding the text of one of the
        model's control tokens (`specials`) is marked in the prompt (`Prompt.text_spans`), so
        that it is read as text: a message cannot close its turn and forge the next one."""
        holds = _special_finder(tuple(specials))
        values: list[str] = []

        def mark(value: Any, key: str = "") -> Any:
            if isinstance(value, str):
                if key == "role" or not holds(value):
                    return value
                values.append(value)
                return _SENTINEL.format(len(values) - 1)
            if isinstance(value, list):
                return [mark(v) for v in value]
            if isinstance(value, dict):
                return {k: mark(v, k) for k, v in value.items()}
            return value

        text = self._render(mark(messages), mark(tools))
        return _unmark(text, values) if values else Prompt(text)

    def _render(self, messages: list[dict[str, Any]], tools: Any) -> str:
        extra = {"tools": tools} if tools else {}
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, **self._specials, **extra
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template rejected these messages: {exc.message}",
                param="messages",
            ) from None


@dataclass
class Prompt:
    """A rendered chat: its text, and the ranges of it that are client text holding
    special-token text (the engine reads those as text)."""

    text: str
    text_spans: list[tuple[int, int]] = field(default_factory=list)


# A client string holding special-token text is replaced by a marker while the template runs,
# then put back: so its place in the prompt is known exactly. The marker's line break tells
# where the template wrote the value raw ("\n") and where as JSON with `tojson` ("\\n"), so
# the value is put back the same way. Private-use characters appear in no template.
_SENTINEL = "\ue000{}\n\ue001"
_MARKED = re.compile("\ue000(\\d+)(\n|\\\\n)\ue001")
# Control tokens are written between brackets in every family llmd knows (<|im_end|>,
# <end_of_turn>, </s>, [INST], <unused0>): found with one scan, then looked up.
_BRACKETED = re.compile(r"<[^<>\n]{1,64}>|\[[^\[\]\n]{1,64}\]")


@functools.lru_cache(maxsize=16)
def _special_finder(specials: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a text holds one of `specials` (one scan, whatever their number: Gemma 3 has
    6,250)."""
    bracketed = frozenset(s for s in specials if _BRACKETED.fullmatch(s))
    others = [s for s in specials if s not in bracketed]

    def holds(text: str) -> bool:
        if any(m.group() in bracketed for m in _BRACKETED.finditer(text)):
            return True
        return any(s in text for s in others)

    return holds


def _unmark(text: str, values: list[str]) -> Prompt:
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    size = pos = 0
    for match in _MARKED.finditer(text):
        out.append(text[pos : match.start()])
        size += match.start() - pos
        value = values[int(match.group(1))]
        if match.group(2) != "\n":  # inside tojson's output: put back as JSON string text
            value = json.dumps(value, ensure_ascii=False)[1:-1]
        out.append(value)
        spans.append((size, size + len(value)))
        size += len(value)
        pos = match.end()
    out.append(text[pos:])
    return Prompt("".join(out), spans)


def choose_template(
    override: str | None, metadata: dict[str, str], bos_token: str, eos_token: str
) -> ChatTemplate | None:
    """The override from the config, else the GGUF's own, else the architecture's known one."""
    if override:
        return ChatTemplate(override, bos_token, eos_token, "config")
    if source := metadata.get("tokenizer.chat_template"):
        return ChatTemplate(source, bos_token, eos_token, "gguf")
    arch = metadata.get("general.architecture", "")
    if arch in KNOWN_TEMPLATES:
        return ChatTemplate(KNOWN_TEMPLATES[arch], bos_token, eos_token, f"builtin:{arch}")
    return None
