"""OpenAI's Responses API (`POST /v1/responses`): the request as the official SDK sends it,
checked, and translated onto a chat completions request (`ResponsesRequest.to_chat`), so the
model work is chat completions' own (llmd/serving/responses.py writes the answer back).

What is taken: `input` (a string, or items: `message` with text parts, `function_call`,
`function_call_output`; `reasoning` items are dropped, as another model's hidden thoughts mean
nothing to this one), `instructions`, `max_output_tokens`, `temperature`, `top_p`, function
`tools`, `tool_choice`, `parallel_tool_calls`, `text.format`, `metadata`, `user`, `stream`,
`store`, `previous_response_id`. Fields that ask for what llmd cannot do and would change the
answer's meaning (`background: true`, a `conversation`, a stored `prompt`, built-in tools,
images and files) are a 400 naming them; fields that only tune OpenAI's service
(`reasoning`, `include`, `service_tier`, `truncation`, `prompt_cache_key`, ...) are ignored, as
OpenAI-compatible servers do. A mistake is a 400 naming the Responses field
(`input[2].call_id`), never the chat field it becomes.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmd.errors import InvalidRequest
from llmd.protocol.openai import ChatCompletionRequest, ModelRequest
from llmd.protocol.response_items import (
    ID_PREFIXES,
    FunctionCallItem,
    Item,
    MessageItem,
    model_error,
    new_id,
    parse_item,
    stored_item,
    text_of,
)

MAX_METADATA = 16  # OpenAI: at most 16 pairs, keys to 64 characters, values to 512
REFUSED_FIELDS = {
    "conversation": "Conversations are not supported; use 'previous_response_id' or send "
    "the whole conversation as 'input'.",
    "prompt": "Stored prompt templates are not supported; send 'instructions' and 'input'.",
    "context_management": "Context management (compaction) is not supported.",
}


# -- tools and formats -----------------------------------------------------------------------


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        """As the Response lists it: calls are held to the schema whether strict or not."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": True if self.strict is None else self.strict,
        }


class NamedFunction(BaseModel):
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    """`text.format`: what `responses.parse(text_format=Model)` sends is `json_schema` with
    `name`, `schema` and `strict` side by side (not nested as in chat)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        out = {"type": "json_schema", "name": self.name, "schema": self.schema_}
        if self.description is not None:  # a string in OpenAI's schema, never null
            out["description"] = self.description
        return out | {"strict": self.strict}


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


# -- the request -----------------------------------------------------------------------------


class ResponsesRequest(ModelRequest):
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = Field(None, min_length=1)
    background: bool | None = None

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} key-value pairs")
        for key, text in value.items():
            if len(key) > 64 or len(text) > 512:
                raise ValueError("keys are at most 64 characters, values at most 512")
        return value

    def check(self) -> None:
        if self.background:
            raise InvalidRequest(
                "Background responses are not supported: send the request without "
                "'background' (or stream it) and wait for the answer.",
                param="background",
            )
        for name, reason in REFUSED_FIELDS.items():
            if (self.model_extra or {}).get(name) is not None:
                raise InvalidRequest(reason, param=name)
        if isinstance(self.input, str):
            pass
        elif not self.input and self.previous_response_id is None:
            raise InvalidRequest("'input' must not be empty.", param="input")
        _ = self.items, self.function_tools, self.choice
        names = [t.name for t in self.function_tools]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidRequest(f"Two tools are named '{name}'.", param=f"tools[{i}].name")
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.name is None:
                raise InvalidRequest(
                    "A json_schema format needs a 'name'.", param="text.format.name"
                )
            if fmt.schema_ is None:
                raise InvalidRequest(
                    "A json_schema format needs a 'schema'.", param="text.format.schema"
                )

    @cached_property
    def items(self) -> list[Item]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        parsed = (parse_item(raw, f"input[{i}]") for i, raw in enumerate(self.input))
        return [item for item in parsed if item is not None]

    @cached_property
    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for i, raw in enumerate(self.tools or []):
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind != "function":
                raise InvalidRequest(
                    f"Tools of type {kind!r} are not supported: llmd runs no built-in tools "
                    "(web search, file search, computer use, code interpreter, MCP, ...); "
                    "give function tools and run them yourself.",
                    param=f"tools[{i}].type",
                )
            try:
                tools.append(FunctionTool.model_validate(raw))
            except ValidationError as exc:
                raise model_error(exc, f"tools[{i}]") from None
        return tools

    @cached_property
    def choice(self) -> str | NamedFunction | None:
        """`tool_choice`: "none", "auto", "required", or one function by name."""
        value = self.tool_choice
        if value is None or value in ("none", "auto", "required"):
            return value
        if isinstance(value, str):
            raise InvalidRequest(
                f"Invalid value for 'tool_choice': {value!r}; expected 'none', 'auto', "
                "'required' or a function.",
                param="tool_choice",
            )
        kind = value.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"tool_choice of type {kind!r} is not supported: llmd runs function tools only.",
                param="tool_choice.type",
            )
        try:
            return NamedFunction.model_validate(value)
        except ValidationError as exc:
            raise model_error(exc, "tool_choice") from None

    def stored_input(self) -> list[dict[str, Any]]:
        """This request's input items as stored with its response, each with an id of its
        own: a client's id given twice would page input_items' `after` in a circle."""
        items, seen = [], set()
        for item in self.items:
            stored = stored_item(item)
            if stored["id"] in seen:
                stored["id"] = new_id(ID_PREFIXES[stored["type"]])
            seen.add(stored["id"])
            items.append(stored)
        return items

    def echo(self) -> dict[str, Any]:
        """The request's settings as every Response repeats them (the sampling values are
        the serving's: those the model ran with)."""
        choice: Any = self.choice or "auto"
        if isinstance(choice, NamedFunction):
            choice = {"type": "function", "name": choice.name}
        fmt = self.text.format if self.text and self.text.format else TextFormat(type="text")
        text: dict[str, Any] = {"format": fmt.echo()}
        if self.text is not None and self.text.verbosity is not None:
            text["verbosity"] = self.text.verbosity
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "tools": [t.echo() for t in self.function_tools],
            "tool_choice": choice,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "text": text,
            "metadata": self.metadata or {},
            "user": self.user,
            "store": self.store is not False,
            "previous_response_id": self.previous_response_id,
        }

    def to_chat(self, earlier: list[dict[str, Any]] | None = None) -> ChatCompletionRequest:
        """The chat completions request this one is: `instructions` as a system message
        first, then the `earlier` conversation (a previous response's, stored items), then
        the input; calls as an assistant's tool_calls, their outputs as tool messages."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        calls: set[str] = set()
        before = [parse_item(raw, "previous_response_id") for raw in earlier or []]
        for item in before:
            if item is not None:
                _add(messages, item, calls, "previous_response_id")
        for i, item in enumerate(self.items):
            _add(messages, item, calls, f"input[{i}]" if isinstance(self.input, list) else "input")
        if not messages:
            raise InvalidRequest("'input' must not be empty.", param="input")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
            "parallel_tool_calls": self.parallel_tool_calls,
            "stream": self.stream,  # the request's record says how it was answered
        }
        if self.function_tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": t.model_dump(
                        include={"name", "description", "parameters", "strict"}
                    ),
                }
                for t in self.function_tools
            ]
        if self.choice is not None:
            choice = self.choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, NamedFunction)
                else choice
            )
        fmt = self.text.format if self.text else None
        if fmt is not None:
            body["response_format"] = {"type": fmt.type}
            if fmt.type == "json_schema":
                body["response_format"]["json_schema"] = {
                    "name": fmt.name,
                    "description": fmt.description,
                    "schema": fmt.schema_,
                    "strict": fmt.strict,
                }
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        try:
            chat: ChatCompletionRequest = ChatCompletionRequest.parse(body)
        except InvalidRequest as exc:
            raise responses_error(exc) from None
        return chat


def _add(messages: list[dict[str, Any]], item: Item, calls: set[str], where: str) -> None:
    """One item onto the chat messages: consecutive calls gather in one assistant message."""
    if isinstance(item, MessageItem):
        messages.append({"role": item.role, "content": text_of(item.content, "content")})
        return
    if isinstance(item, FunctionCallItem):
        call = {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)
        elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
            last["tool_calls"] = [call]  # the text the model wrote before its calls
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        calls.add(item.call_id)
        return
    if item.call_id not in calls:
        raise InvalidRequest(
            f"No function_call with call_id '{item.call_id}' comes before this output.",
            param=f"{where}.call_id",
        )
    messages.append(
        {"role": "tool", "tool_call_id": item.call_id, "content": text_of(item.output, "output")}
    )


# Chat parameters as the Responses fields they come from, for errors raised on the chat
# request (by its parsing, the serving's checks or the engine).
_PARAMS = (
    (re.compile(r"^tools\[(\d+)\]\.function\.?"), r"tools[\1]."),
    (re.compile(r"^response_format\.json_schema\.?"), "text.format."),
    (re.compile(r"^response_format\.?"), "text.format."),
    (re.compile(r"^max_completion_tokens$"), "max_output_tokens"),
    (re.compile(r"^messages.*"), "input"),
    (re.compile(r"^tool_choice\..*"), "tool_choice"),
)


def responses_param(param: str | None) -> str | None:
    """The Responses field a chat request's parameter came from."""
    if param is None:
        return None
    for pattern, replacement in _PARAMS:
        if pattern.match(param):
            return pattern.sub(replacement, param).rstrip(".")
    return param


def responses_error(exc: InvalidRequest) -> InvalidRequest:
    """The same 400, naming the Responses field (its message keeps the chat words out where
    it quotes the parameter)."""
    param = responses_param(exc.param)
    message = exc.message
    if exc.param and param != exc.param:
        message = message.replace(f"'{exc.param}'", f"'{param}'")
    return InvalidRequest(message, code=exc.code, param=param)
