"""OpenAI API types (chat completions, completions, embeddings): the requests we accept (the
shapes sent back are in openai_bodies.py).

Requests are pydantic models; fields follow the order of OpenAI's reference, our extensions
(llama.cpp sampling knobs) come last and say so. Unknown fields are accepted and logged, as
OpenAI's own server does with fields it does not use. Every check that needs no facts about
the model is made here, when the body is parsed (the rest: llmd/serving/base.py). A request
turns into the engine's sampling parameters in one place, `to_sampling_params`, which merges
in the model's defaults (llmd/sampling.py).
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from llmd.engine.messages import Grammar, SamplingParams
from llmd.errors import InvalidRequest
from llmd.sampling import resolve
from llmd.settings import SamplingDefaults
from llmd.tools import OPENING as TOOL_CALL_OPENING
from llmd.tools import (
    FunctionCall,
    FunctionCallChoice,
    FunctionDefinition,
    Tool,
    ToolCall,
    ToolChoice,
    ToolUse,
    plan_tools,
)
from llmd.units import Duration, parse_duration

log = logging.getLogger("llmd.api")

MAX_STOP = 16
# A grammar or JSON schema is read on the model's engine thread, which every request on
# the model shares: a few ms for this size, seconds for the 32 MB a body may hold.
MAX_GRAMMAR_CHARS = 1_000_000


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def parse(cls, body: Any) -> Any:
        """Validate a JSON body; a mistake becomes a 400 that names the parameter."""
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        try:
            parsed = cls.model_validate(body)
        except ValidationError as exc:
            raise cls.validation_error(exc.errors()[0]) from None
        if parsed.model_extra:
            log.debug("ignoring unsupported fields: %s", ", ".join(sorted(parsed.model_extra)))
        parsed.check()
        return parsed

    @classmethod
    def validation_error(cls, err: ErrorDetails) -> InvalidRequest:
        """pydantic's first error as the 400 this API answers (Anthropic's names it its own
        way: llmd/protocol/anthropic.py)."""
        param = _param_name(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return InvalidRequest(f"Invalid value for '{param}': {msg}", param=param)

    def check(self) -> None:
        """Checks across fields, raising an InvalidRequest with a message of their own
        (pydantic's would say "Invalid value for ..."). None needs facts about the model."""


# pydantic names the branch of a union it tried ("str", "list[int]", "function-after[...]");
# those are not parameters.
_UNION_LABELS = {"str", "int", "float", "bool", "dict", "list", "none", "json-or-python"}


def _param_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in _UNION_LABELS and "[" not in part:
            out += f".{part}" if out else part
    return out or "body"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    """An assistant's calls, sent back with the conversation."""
    tool_call_id: str | None = None
    """A `tool` message: the call it answers."""
    function_call: FunctionCall | None = None
    """Deprecated: an assistant's one call, answered by a `function` message (by `name`)."""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchema(BaseModel):
    """`response_format.json_schema`: what the SDK's `parse(response_format=Model)` sends."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class ModelRequest(_Request):
    """Fields every endpoint that runs a model has."""

    model: str | None = None
    keep_alive: Duration | None = None
    """Ollama's: how long the model stays loaded after this request ('5m', 0, -1)."""

    def keep_alive_s(self) -> float | None | str:
        """Seconds, None for forever, or "default" when the request did not say."""
        return "default" if self.keep_alive is None else parse_duration(self.keep_alive)


class SamplingRequest(ModelRequest):
    """Fields the chat and completions endpoints share: how to generate."""

    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    """JSON mode and structured outputs; completions take it too, as vLLM's do."""
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None
    # llmd extensions, as llama.cpp's server and vLLM accept them:
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False
    speculative: bool = True
    """false: this request decodes one token a step, without drafts (the output is the same)."""
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)
    """A GBNF grammar the output must follow (llama.cpp's server calls it the same)."""

    @field_validator("grammar")
    @classmethod
    def _one_grammar(cls, value: str | None, info: ValidationInfo) -> str | None:
        fmt = info.data.get("response_format")
        if value is not None and fmt is not None and fmt.type != "text":
            raise ValueError("give either 'grammar' or a JSON 'response_format', not both")
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isascii() or not key.isdigit():  # "１２" is a digit to isdigit()
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {key} must be between -100 and 100")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check(self) -> None:
        _ = self.grammar_asked  # built now: a JSON schema too long to use is refused at once

    def completion_limit(self) -> int | None:
        """The most tokens to generate per choice, as asked (None: not said)."""
        return self.max_tokens

    def to_sampling_params(self, configured: SamplingDefaults) -> SamplingParams:
        """The engine's parameters: this request's values, else the model's `configured`
        defaults, else the built-ins (`llmd.sampling.resolve`, the one place that decides)."""
        return resolve(
            configured,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            max_tokens=self.completion_limit(),
            seed=self.seed,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            grammar=self.grammar_asked,
        )

    @cached_property
    def grammar_asked(self) -> Grammar | None:
        """The grammar the output is held to, if any (compiled in the model process)."""
        if self.grammar is not None:
            return Grammar("gbnf", self.grammar, param="grammar")
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and fmt.json_schema and fmt.json_schema.schema_ is not None:
            param = "response_format.json_schema.schema"
            source = json.dumps(fmt.json_schema.schema_)
            if len(source) > MAX_GRAMMAR_CHARS:
                raise InvalidRequest(
                    f"The JSON schema is {len(source)} characters long; at most "
                    f"{MAX_GRAMMAR_CHARS} are supported.",
                    param=param,
                )
            return Grammar("json_schema", source, param=param)
        return Grammar("json_object")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None
    """Deprecated for `tools`; older LangChain and many scripts still send it."""
    function_call: FunctionCallChoice | None = None
    """Deprecated for `tool_choice`."""

    def check(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="logprobs")
        if self.grammar is not None and self.tool_use is not None and self.tool_use.calls_possible:
            raise InvalidRequest("give either 'grammar' or 'tools', not both", param="grammar")
        check_conversation(self.messages)
        super().check()

    def stop_list(self) -> list[str]:
        """Where no call is possible but the conversation shows calls (`tool_choice: "none"`,
        or earlier calls and no tools), a model may imitate one in its text: it ends there."""
        stops = super().stop_list()
        use = self.tool_use
        shown = use is not None or any(m.tool_calls or m.function_call for m in self.messages)
        if shown and (use is None or not use.calls_possible):
            stops.append(TOOL_CALL_OPENING)
        return stops

    def client_stops(self) -> list[str]:
        """The stop strings the client gave (not the server's own)."""
        return super().stop_list()

    @cached_property
    def tool_use(self) -> ToolUse | None:
        """What the model may call (None: no tools given)."""
        return plan_tools(
            self.tools,
            self.tool_choice,
            self.parallel_tool_calls,
            self.functions,
            self.function_call,
        )

    @cached_property
    def grammar_asked(self) -> Grammar | None:
        answer = super().grammar_asked
        return answer if self.tool_use is None else self.tool_use.grammar(answer)

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_asked(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None


def check_conversation(messages: list[ChatMessage]) -> None:
    """Calls only in assistant messages; every tool result answers an earlier call."""
    calls: set[str] = set()
    functions: set[str] = set()
    for i, msg in enumerate(messages):
        if (msg.tool_calls or msg.function_call) and msg.role != "assistant":
            raise InvalidRequest(
                "Only assistant messages carry tool calls.", param=f"messages[{i}].tool_calls"
            )
        calls.update(call.id for call in msg.tool_calls or [])
        functions.update(call.function.name for call in msg.tool_calls or [])
        if msg.function_call:
            functions.add(msg.function_call.name)
        if msg.role == "tool":
            if not msg.tool_call_id:
                raise InvalidRequest(
                    "A tool message needs the 'tool_call_id' of the call it answers.",
                    param=f"messages[{i}].tool_call_id",
                )
            if msg.tool_call_id not in calls:
                raise InvalidRequest(
                    f"Tool message answers '{msg.tool_call_id}', which no earlier assistant "
                    "message called.",
                    param=f"messages[{i}].tool_call_id",
                )
        if msg.role == "function" and msg.name not in functions:
            raise InvalidRequest(
                "A function message needs the 'name' of a function an earlier assistant "
                "message called.",
                param=f"messages[{i}].name",
            )


def _split_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """A prompt or embedding input as OpenAI takes it (a string, a token list, or a list of
    either) as the list of single inputs it holds."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(p, int) for p in value):
        return [list(value)]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(p == [] for p in value)):
            raise ValueError("must not be empty")
        return value

    def check(self) -> None:
        if self.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        super().check()

    def prompts(self) -> list[str | list[int]]:
        return _split_inputs(self.prompt)


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the inputs of one request


class EmbeddingRequest(ModelRequest):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if not items or any(len(item) == 0 for item in items if not isinstance(item, int)):
            raise ValueError("must not be empty, nor hold an empty string or token list")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return value

    def inputs(self) -> list[str | list[int]]:
        return _split_inputs(self.input)
