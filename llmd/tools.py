"""Tool calling, as a request asks for it: the OpenAI types (`tools`, `tool_choice`, an
assistant's `tool_calls`, and the deprecated `functions` / `function_call`), the call format
the model writes, and the grammar that holds its calls to each tool's parameter schema.

One call format for every model, Hermes' (Qwen 2.5 and 3, Hermes, SmolLM3 templates use it):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A model whose chat template knows this format is shown the tools by its template; any other
gets them in its system prompt (llmd/serving/toolcalls.py writes both, and reads the calls
back). Either way the grammar holds every call to its tool's schema: for "required" or a named
function the whole answer is calls; for "auto" the model writes freely and the grammar takes
hold when it writes the opening (a lazy grammar, as llama.cpp's server does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmd.engine.messages import Grammar, ToolSpec
from llmd.errors import InvalidRequest

OPENING = "<tool_call>"
CLOSING = "</tool_call>"
MAX_TOOLS_CHARS = 1_000_000
"""The tools' schemas are compiled on the model's engine thread, as a JSON schema is
(llmd/protocol/, MAX_GRAMMAR_CHARS)."""
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""OpenAI: "Omitting parameters defines a function with an empty parameter list"."""


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    """Calls are held to the schema whether strict or not."""

    def parameters_schema(self) -> dict[str, Any]:
        return self.parameters if self.parameters is not None else NO_PARAMETERS


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
FunctionCallChoice = Literal["none", "auto"] | FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str
    """JSON text, as the model wrote it."""


class ToolCall(BaseModel):
    """One call in an assistant message the client sends back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


@dataclass(frozen=True)
class ToolUse:
    """What a request allows the model to call, and how."""

    functions: list[FunctionDefinition]
    choice: str
    """"none", "auto", "required", or the one function's name that must be called."""
    parallel: bool
    """Several calls in one answer (OpenAI's default), or at most one."""
    legacy: bool = False
    """Asked with `functions`: answered with `message.function_call` (one call)."""

    @property
    def calls_possible(self) -> bool:
        return self.choice != "none"

    @property
    def required(self) -> bool:
        return self.choice not in ("none", "auto")

    def offered(self) -> list[FunctionDefinition]:
        """The functions the model may call (shown to it in the prompt)."""
        if self.choice == "none":
            return []
        if self.required and self.choice != "required":
            return [f for f in self.functions if f.name == self.choice]
        return self.functions

    def grammar(self, answer: Grammar | None) -> Grammar | None:
        """The grammar of the whole answer: calls of the offered functions; with "auto", also
        free text before them, or else the answer held to `answer` (response_format)."""
        if not self.calls_possible:
            return answer
        auto = self.choice == "auto"
        return Grammar(
            "tool_calls",
            param="tools",
            tools=[ToolSpec(f.name, json.dumps(f.parameters_schema())) for f in self.offered()],
            opening=OPENING,
            closing=CLOSING,
            parallel=self.parallel,
            lazy=auto and answer is None,
            answer=answer if auto else None,
        )


def plan_tools(
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    functions: list[FunctionDefinition] | None,
    function_call: FunctionCallChoice | None,
) -> ToolUse | None:
    """The request's tool use, checked (None: no tools). A 400 names the parameter."""
    if tools and functions:
        raise InvalidRequest(
            "Give either 'tools' or the deprecated 'functions', not both.", param="functions"
        )
    legacy = bool(functions) or (function_call is not None and not tools)
    defs = [t.function for t in tools or []] if not legacy else list(functions or [])
    choice_param = "function_call" if legacy else "tool_choice"
    choice = _choice_name(function_call if legacy else tool_choice, bool(defs))
    if not defs:
        if choice not in ("none", "auto"):
            raise InvalidRequest(
                f"'{choice_param}' asks for a function call, but no "
                f"{'functions' if legacy else 'tools'} are given.",
                param=choice_param,
            )
        return None
    names = [f.name for f in defs]
    listed = "functions" if legacy else "tools"
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequest(f"Two {listed} are named '{name}'.", param=f"{listed}[{i}]")
    for i, f in enumerate(defs):
        if f.parameters_schema().get("type", "object") != "object":
            raise InvalidRequest(
                "A function's parameters must be a JSON schema of type 'object'.",
                param=f"{listed}[{i}]{'' if legacy else '.function'}.parameters",
            )
    if choice not in ("none", "auto", "required") and choice not in names:
        raise InvalidRequest(
            f"'{choice_param}' names the function '{choice}', which is not in '{listed}'.",
            param=choice_param,
        )
    if sum(len(json.dumps(f.parameters_schema())) for f in defs) > MAX_TOOLS_CHARS:
        raise InvalidRequest(
            f"The tools' parameter schemas are over {MAX_TOOLS_CHARS} characters long.",
            param=listed,
        )
    parallel = parallel_tool_calls is not False and not legacy
    return ToolUse(defs, choice, parallel, legacy)


def _choice_name(choice: ToolChoice | FunctionCallChoice | None, has_tools: bool) -> str:
    if choice is None:
        return "auto" if has_tools else "none"
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    if isinstance(choice, FunctionName):
        return choice.name
    return choice
