"""Anthropic's Messages API types (`POST /v1/messages`, `/v1/messages/count_tokens`): the
requests we accept, their translation onto a chat request, and the shapes we send back.

Exact to the official `anthropic` SDK's types. A request turns into a `ChatCompletionRequest`
in one method, `to_chat`, so the answer comes from the one serving path chat completions use:

- `system` (a string or text blocks) and any `system`-role message become system messages;
  consecutive turns of one role are merged into one turn, as Anthropic does.
- A user turn's `tool_result` blocks become `tool` messages (an `is_error` result's text is
  prefixed "Error: "), its text a user message; an assistant turn's `tool_use` blocks become
  its `tool_calls` (the `input` object as the arguments' JSON). Earlier `thinking` blocks are
  dropped (no model here writes them); image, document and other blocks are a 400.
- `tools` (client tools: `name`, `description`, `input_schema`) become functions;
  `tool_choice` `auto`/`any`/`tool`/`none` becomes `auto`/`required`/the named function/`none`,
  `disable_parallel_tool_use` `parallel_tool_calls: false`. Server tools are a 400.
- `output_config.format` (JSON schema) becomes `response_format`; `metadata.user_id` `user`.
- Accepted and without effect: `thinking`, `service_tier`, `output_config.effort`,
  `cache_control`, `container`, `inference_geo`, `speed` and other fields the SDK may send.

Bad input is a 400 whose message starts with the field, in Anthropic's dotted form
(`messages.0.content.1.type: ...`), as Anthropic's own messages do.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_core import ErrorDetails

from llmd.errors import InvalidRequest
from llmd.protocol.openai import MAX_STOP, ChatCompletionRequest, ChatMessage, ModelRequest
from llmd.tools import (
    FunctionCall,
    FunctionDefinition,
    FunctionName,
    NamedToolChoice,
    Tool,
    ToolCall,
    ToolChoice,
)

log = logging.getLogger("llmd.api")

_CONTENT_TYPES = {"text", "tool_use", "tool_result"}
_DROPPED_TYPES = {"thinking", "redacted_thinking"}
"""Blocks a client replays from a thinking model's answer: no model here reads them."""


def dotted(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as Anthropic names fields: `messages.0.content`."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _LABELS or "[" in p))]
    return ".".join(parts) or "body"


# pydantic names the branch of a union it tried ("str", "list[...]"); those are not fields.
_LABELS = {"str", "int", "float", "bool", "dict", "list", "none", "json-or-python"}


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", param=field)


def _validate(cls: type[BaseModel], data: Any, at: str) -> Any:
    """`data` as `cls`, or a 400 naming the field under `at`."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(p for p in (at, dotted(err["loc"])) if p and p != "body") or at
        raise _invalid(field, err["msg"].removeprefix("Value error, ")) from None


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, citations: no effect here


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None
    is_error: bool = False


Block = TextBlock | ToolUseBlock | ToolResultBlock


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class InputSchema(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["object"]


class CustomTool(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, strict, input_examples ...

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: InputSchema


class ToolChoiceParam(BaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Metadata(BaseModel):
    user_id: str | None = Field(None, max_length=256)


class OutputFormat(BaseModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # effort: no effect here

    format: OutputFormat | None = None


class CountTokensRequest(ModelRequest):
    """`POST /v1/messages/count_tokens`: what shapes the prompt (no sampling)."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoiceParam | None = None
    output_config: OutputConfig | None = None
    thinking: dict[str, Any] | None = None
    """Accepted, no effect: the models served here do not think aloud in blocks."""
    _chat: ChatCompletionRequest | None = PrivateAttr(None)

    @classmethod
    def validation_error(cls, err: ErrorDetails) -> InvalidRequest:
        """A mistake is a 400 naming the field first, as Anthropic does."""
        return _invalid(dotted(err["loc"]), err["msg"].removeprefix("Value error, "))

    def check(self) -> None:
        self._chat = self._build_chat()  # every check that can fail, made now

    def to_chat(self) -> ChatCompletionRequest:
        """This request as a chat completions request: the one way to the model."""
        return self._chat if self._chat is not None else self._build_chat()

    # -- the translation -------------------------------------------------------------------

    def _sampling(self) -> dict[str, Any]:
        return {}

    def _build_chat(self) -> ChatCompletionRequest:
        tools = self._tools()
        choice, parallel = self._choice(tools)
        fmt = self.output_config.format if self.output_config else None
        response_format = None
        if fmt is not None:
            schema = {"name": "output", "schema": fmt.schema_}
            response_format = {"type": "json_schema", "json_schema": schema}
        body = {
            "model": self.model,
            "keep_alive": self.keep_alive,
            "messages": self._messages(),
            "tools": tools or None,
            "tool_choice": choice,
            "parallel_tool_calls": parallel,
            "response_format": response_format,
            **self._sampling(),
        }
        try:
            chat = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:  # checked above: a gap in those checks, told plainly
            err = exc.errors()[0]
            raise _invalid("body", err["msg"]) from None
        try:
            _ = chat.tool_use, chat.grammar_asked  # a schema too long is refused now
        except InvalidRequest as exc:
            raise renamed(exc) from None
        return chat

    def _tools(self) -> list[Tool]:
        out: list[Tool] = []
        names: set[str] = set()
        for i, raw in enumerate(self.tools or []):
            at = f"tools.{i}"
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind not in (None, "custom"):
                raise _invalid(
                    f"{at}.type",
                    f"the tool type '{kind}' (a server tool) is not supported here; only client "
                    "tools (name, description, input_schema) are",
                )
            tool = _validate(CustomTool, raw, at)
            if tool.name in names:
                raise _invalid(f"{at}.name", f"tool names must be unique: '{tool.name}' repeats")
            names.add(tool.name)
            schema = tool.input_schema.model_dump(exclude_none=False)
            fn = FunctionDefinition(name=tool.name, description=tool.description, parameters=schema)
            out.append(Tool(type="function", function=fn))
        return out

    def _choice(self, tools: list[Tool]) -> tuple[ToolChoice | None, bool | None]:
        tc = self.tool_choice
        if tc is None:
            return None, None
        if tc.type in ("any", "tool") and not tools:
            raise _invalid("tool_choice.type", f"'{tc.type}' needs tools, and none are given")
        parallel = False if tc.disable_parallel_tool_use else None
        if tc.type == "tool":
            if not tc.name:
                raise _invalid("tool_choice.name", "Field required")
            if tc.name not in {t.function.name for t in tools}:
                raise _invalid("tool_choice.name", f"no tool named '{tc.name}' is in tools")
            return NamedToolChoice(type="function", function=FunctionName(name=tc.name)), parallel
        choice: ToolChoice = {"auto": "auto", "any": "required", "none": "none"}[tc.type]  # type: ignore[assignment]
        return (choice if tools else None), parallel

    def _messages(self) -> list[ChatMessage]:
        out: list[ChatMessage] = []
        if self.system is not None:
            system = self.system
            text = system if isinstance(system, str) else "".join(b.text for b in system)
            out.append(ChatMessage(role="system", content=text))
        turns = _merge_turns(self.messages)
        called: set[str] = set()
        for n, (role, blocks) in enumerate(turns):
            last = n == len(turns) - 1
            if role == "system":
                text = "\n\n".join(b.text for _, b in blocks if isinstance(b, TextBlock))
                out.append(ChatMessage(role="system", content=text))
            elif role == "assistant":
                out.append(_assistant(blocks, last, called))
            else:
                answered = _user(blocks, out, called)
                called -= answered
        unanswered = sorted(called)
        if unanswered:
            raise _invalid(
                "messages",
                "tool_use ids were found without tool_result blocks immediately after: "
                f"{', '.join(unanswered)}. Each tool_use block must have a corresponding "
                "tool_result block in the next message.",
            )
        return out


def _merge_turns(messages: list[InputMessage]) -> list[tuple[str, list[tuple[str, Block]]]]:
    """Consecutive messages of one role as one turn of (field, block) pairs, each block
    checked; text blocks of merged messages are separated by a blank line."""
    turns: list[tuple[str, list[tuple[str, Block]]]] = []
    for i, msg in enumerate(messages):
        at = f"messages.{i}.content"
        raw = msg.content
        if not raw:
            raise _invalid(at, "a message's content must not be empty")
        items = [{"type": "text", "text": raw}] if isinstance(raw, str) else raw
        blocks: list[tuple[str, Block]] = []
        for j, item in enumerate(items):
            where = at if isinstance(raw, str) else f"{at}.{j}"
            block = _block(item, where, msg.role)
            if block is not None:
                blocks.append((where, block))
        if turns and turns[-1][0] == msg.role:
            prev = turns[-1][1]
            if prev and blocks and isinstance(prev[-1][1], TextBlock):
                prev.append((at, TextBlock(type="text", text="\n\n")))
            prev.extend(blocks)
        else:
            turns.append((msg.role, blocks))
    return turns


def _block(item: Any, at: str, role: str) -> Block | None:
    kind = item.get("type") if isinstance(item, dict) else None
    if not isinstance(kind, str):  # a list or object is no type (nor hashable, for the sets)
        kind = None
    if kind in _DROPPED_TYPES and role == "assistant":
        return None
    if kind not in _CONTENT_TYPES:
        what = f"'{kind}' blocks are" if isinstance(kind, str) else "a block without a type is"
        raise _invalid(
            f"{at}.type", f"{what} not supported here (text, tool_use and tool_result are)"
        )
    if role == "system" and kind != "text":
        raise _invalid(f"{at}.type", f"a system message holds text only, not '{kind}'")
    if kind == "tool_use" and role != "assistant":
        raise _invalid(f"{at}.type", "tool_use blocks belong in assistant messages")
    if kind == "tool_result" and role != "user":
        raise _invalid(f"{at}.type", "tool_result blocks belong in user messages")
    classes: dict[str, type[BaseModel]] = {
        "text": TextBlock,
        "tool_use": ToolUseBlock,
        "tool_result": ToolResultBlock,
    }
    block: Block = _validate(classes[kind], item, at)
    return block


def _assistant(blocks: list[tuple[str, Block]], last: bool, called: set[str]) -> ChatMessage:
    if last:
        raise _invalid(
            "messages",
            "the last message must be a user message: continuing a prefilled assistant "
            "message is not supported here",
        )
    text = "".join(b.text for _, b in blocks if isinstance(b, TextBlock))
    calls = []
    for where, b in blocks:
        if isinstance(b, ToolUseBlock):
            if b.id in called:
                raise _invalid(f"{where}.id", f"tool_use ids must be unique: '{b.id}' repeats")
            called.add(b.id)
            args = json.dumps(b.input, ensure_ascii=False)
            calls.append(ToolCall(id=b.id, function=FunctionCall(name=b.name, arguments=args)))
    return ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)


def _user(blocks: list[tuple[str, Block]], out: list[ChatMessage], called: set[str]) -> set[str]:
    """The turn's messages added to `out`, in order; the tool_use ids it answers."""
    answered: set[str] = set()
    text: list[str] = []

    def flush() -> None:
        if text:
            out.append(ChatMessage(role="user", content="".join(text)))
            text.clear()

    for where, b in blocks:
        if isinstance(b, TextBlock):
            text.append(b.text)
        elif isinstance(b, ToolResultBlock):
            if b.tool_use_id not in called:
                raise _invalid(
                    f"{where}.tool_use_id",
                    f"'{b.tool_use_id}' answers no tool_use block of the assistant message "
                    "before it",
                )
            answered.add(b.tool_use_id)
            flush()
            result = _result_text(b, where)
            content = f"Error: {result}" if b.is_error else result
            out.append(ChatMessage(role="tool", content=content, tool_call_id=b.tool_use_id))
    flush()
    return answered


def _result_text(block: ToolResultBlock, at: str) -> str:
    if block.content is None or isinstance(block.content, str):
        return block.content or ""
    parts = []
    for k, item in enumerate(block.content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "text":
            raise _invalid(f"{at}.content.{k}.type", "a tool_result holds text blocks only")
        parts.append(_validate(TextBlock, item, f"{at}.content.{k}").text)
    return "".join(parts)


_PARAMS = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "user": "metadata.user_id",
}


def renamed(exc: InvalidRequest) -> InvalidRequest:
    """A 400 raised on the translated chat request, naming this API's field instead."""
    param = exc.param or ""
    if param.startswith("tools"):
        field = "tools"
    elif param.startswith("response_format"):
        field = "output_config.format.schema"
    else:
        field = _PARAMS.get(param.split(".")[0].split("[")[0], param or "body")
    message = exc.message if exc.message.startswith(f"{field}:") else f"{field}: {exc.message}"
    return InvalidRequest(message, code=exc.code, param=field, status=exc.status)


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: Literal["auto", "standard_only"] | None = None
    """Accepted: every request is served alike here (usage says "standard")."""

    def check(self) -> None:
        for i, stop in enumerate(self.stop_sequences or []):
            if not stop:
                raise _invalid(f"stop_sequences.{i}", "a stop sequence must not be empty")
        super().check()

    def _sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "stop": self.stop_sequences,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "user": self.metadata.user_id if self.metadata else None,
            "stream": self.stream,
        }


# -- responses ---------------------------------------------------------------------------


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def tool_use_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """Anthropic's usage: `input_tokens` counts the prompt's tokens that were computed, not
    those read from the cache (`cache_read_input_tokens`, llmd's prefix reuse); their sum is
    the prompt's length, what count_tokens answers. Nothing is written to a cache on request,
    so `cache_creation_input_tokens` is 0."""
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "output_tokens": completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached_tokens,
        "service_tier": "standard",
    }


def stop_reason(engine_reason: str | None, made_calls: bool, stop_sequence: str | None) -> str:
    if engine_reason == "length":
        return "max_tokens"
    if stop_sequence is not None:
        return "stop_sequence"
    return "tool_use" if made_calls else "end_turn"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the `input` object ({} for arguments cut short by max_tokens,
    where a stream's client assembles what it can of them)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
