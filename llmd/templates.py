"""Chat templates: the model's own Jinja template, rendered in a sandbox.

GGUF files usually carry their chat template (`tokenizer.chat_template`). One that does not
(Gemma-3-270M is a base model) gets its architecture's known template from the table below;
with neither, chat requests get a clear 400 and completions keep working.
"""

from __future__ import annotations

import json
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
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt for `messages`; `tools` as Hugging Face's `apply_chat_template` passes
        them (for templates that render tools)."""
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
