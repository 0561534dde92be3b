"""Tool calls in a chat: the conversation written for the model's chat template (tools,
earlier calls and their results), and the calls read back out of what the model writes, as a
whole answer or a delta at a time.

The call format is llmd/tools.py's (Hermes'). A template that knows it gets the tools and the
calls as Hugging Face's `apply_chat_template` passes them; any other template gets plain
messages: the tools described in the system prompt, earlier calls written into the assistant's
text and their results into a user turn, so that templates which only know text (SmolLM2's
ChatML, Gemma's) render them without change.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from llmd.protocol import ChatMessage
from llmd.tools import CLOSING, OPENING, ToolCall, ToolUse

TOOLS_OPENING, TOOLS_CLOSING = "<tools>", "</tools>"
RESPONSE_OPENING, RESPONSE_CLOSING = "<tool_response>", "</tool_response>"
RESULTS_PROMPT = "Use these results to answer."


def knows_tools(template_source: str) -> bool:
    """Whether a chat template renders tools, calls and results in our call format."""
    return all(part in template_source for part in ("tools", "tool_calls", OPENING))


def template_messages(
    messages: list[ChatMessage], use: ToolUse | None, aware: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and tools, for a template that is `aware` of them) to render."""
    turns = _turns(messages)
    offered = use.offered() if use is not None else []
    if aware:
        for turn in turns:
            for call in turn.get("tool_calls", []):
                del call["arguments_text"]
        tools = [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in offered]
        return turns, tools or None
    plain: list[dict[str, Any]] = []
    for turn in turns:
        if turn["role"] == "tool":
            result = f"{RESPONSE_OPENING}\n{turn['content']}\n{RESPONSE_CLOSING}"
            if plain and plain[-1].get("tool_results"):
                plain[-1]["content"] += "\n" + result
            else:
                plain.append({"role": "user", "content": result, "tool_results": True})
            continue
        if turn.get("tool_calls"):
            calls = turn["tool_calls"]
            written = [_write_call(c["function"]["name"], c["arguments_text"]) for c in calls]
            text = turn["content"]
            turn = {"role": "assistant", "content": "\n".join(([text] if text else []) + written)}
        plain.append({k: v for k, v in turn.items() if k in ("role", "content", "name")})
    for turn in plain:
        if turn.pop("tool_results", None):
            # Without it small models (SmolLM2) write a result of their own instead of
            # answering: measured in docs/tools.md.
            turn["content"] += "\n" + RESULTS_PROMPT
    if offered and use is not None:
        _add_to_system(plain, tools_prompt(use))
    return plain, None


def _turns(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation in Hugging Face's chat format: calls with their arguments as objects,
    tool results with the name of the function they answer; the deprecated `function_call`
    and `function` messages as calls and tool results."""
    names: dict[str, str] = {}
    last_call_id: dict[str, str] = {}
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        turn: dict[str, Any] = {"role": msg.role, "content": msg.text()}
        if msg.name and msg.role != "function":
            turn["name"] = msg.name
        calls = list(msg.tool_calls or [])
        if msg.function_call is not None:
            legacy_id = f"call_{i}"
            calls.append(ToolCall(id=legacy_id, function=msg.function_call))
        if calls:
            turn["tool_calls"] = []
            for call in calls:
                names[call.id] = call.function.name
                last_call_id[call.function.name] = call.id
                turn["tool_calls"].append(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": _arguments_object(call.function.arguments),
                        },
                        "arguments_text": call.function.arguments,
                    }
                )
        if msg.role == "function":
            call_id = last_call_id.get(msg.name or "", "")
            turn = {"role": "tool", "content": msg.text(), "tool_call_id": call_id}
            turn["name"] = msg.name or ""
        elif msg.role == "tool":
            turn["tool_call_id"] = msg.tool_call_id
            turn["name"] = names.get(msg.tool_call_id or "", "")
        turns.append(turn)
    return turns


def _arguments_object(arguments: str) -> Any:
    """Templates write arguments with `tojson`: an object, as Hugging Face passes them."""
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder's limit
        return arguments


def _write_call(name: str, arguments: str) -> str:
    return f'{OPENING}\n{{"name": {json.dumps(name)}, "arguments": {arguments or "{}"}}}\n{CLOSING}'


def _add_to_system(turns: list[dict[str, Any]], text: str) -> None:
    if turns and turns[0]["role"] in ("system", "developer"):
        turns[0]["content"] = f"{turns[0]['content']}\n\n{text}".lstrip()
    else:
        turns.insert(0, {"role": "system", "content": text})


def tools_prompt(use: ToolUse) -> str:
    """The tools and how to call them, for a template that does not know tools."""
    listed = "\n".join(
        json.dumps({"type": "function", "function": f.model_dump(exclude_none=True)})
        for f in use.offered()
    )
    lines = [
        "# Tools",
        "",
        "You can call functions to help with the request. Each is described by a JSON "
        f"schema, one per line, between {TOOLS_OPENING} and {TOOLS_CLOSING}:",
        TOOLS_OPENING,
        listed,
        TOOLS_CLOSING,
        "",
        "To call a function, write one JSON object with its name and arguments between "
        f"{OPENING} and {CLOSING}:",
        OPENING,
        '{"name": "<function name>", "arguments": {<the arguments as JSON>}}',
        CLOSING,
        "When results come back, answer with them.",
    ]
    if use.choice == "required":
        lines.append("Call at least one function now.")
    elif use.required:
        lines.append(f"Call the function {use.choice} now.")
    if not use.parallel:
        lines.append("Call at most one function at a time.")
    return "\n".join(lines)


# -- reading calls back --------------------------------------------------------------------


@dataclass
class Content:
    text: str


@dataclass
class CallStart:
    index: int
    id: str
    name: str


@dataclass
class CallArguments:
    index: int
    text: str


Piece = Content | CallStart | CallArguments

_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class CallParser:
    """Splits what the model writes into content and calls, a delta at a time. Text that may
    be the start of a call's opening is held back (as stop strings are), so the markup never
    reaches the content; a call's arguments go out as they are written, less the tail that
    may still be the call's closing."""

    pending: str = ""
    """Content not yet sent: a possible start of the opening."""
    call: str | None = None
    """The text of the call being written, after its opening (None: writing content)."""
    args_start: int = -1
    args_sent: int = 0
    calls: int = 0
    text_allowed: bool = True
    """False when the answer must be calls ("required", a named function): a start of the
    opening cut short by max_tokens is then not content."""

    @property
    def made_calls(self) -> bool:
        """Whether the answer holds calls (the last one perhaps cut short)."""
        return self.calls > 0 or self.args_start >= 0

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        while text:
            if self.call is None:
                text = self._content(self.pending + text, out)
            else:
                text = self._call(self.call + text, out)
        return out

    def finish(self) -> list[Piece]:
        """The end of the answer: held-back content goes out; a call cut short (max_tokens)
        keeps what was written of it. After a call, what is held back is the start of the
        next call's opening (the grammar allows nothing else there), cut short: dropped."""
        out: list[Piece] = []
        if self.call is None and self.pending and not self.calls and self.text_allowed:
            out.append(Content(self.pending))
        elif self.call is not None and self.args_start >= 0:
            # The tail held back in case it was the call's end goes out, unless it is: the
            # call object's `}` after whole arguments (and a start of the closing).
            args = self.call[self.args_start :]
            end = args[: len(args) - _partial_suffix(args, CLOSING)].rstrip()
            if end.endswith("}") and _is_json(end[:-1]):
                args = end[:-1].rstrip()
            self._send_arguments(self.call, self.args_start + len(args), out)
        self.pending = ""
        return out

    def _content(self, text: str, out: list[Piece]) -> str:
        if self.calls:  # after a call the grammar allows only line breaks and more calls
            text = text.lstrip()
        start = text.find(OPENING)
        if start < 0:
            keep = _partial_suffix(text, OPENING)
            sent, self.pending = text[: len(text) - keep], text[len(text) - keep :]
            if sent:
                out.append(Content(sent))
            return ""
        if text[:start]:
            out.append(Content(text[:start]))
        self.pending, self.call, self.args_start, self.args_sent = "", "", -1, 0
        return text[start + len(OPENING) :]

    def _call(self, text: str, out: list[Piece]) -> str:
        self.call = text
        if self.args_start < 0:
            head = _CALL_HEAD.match(text)
            if head is None:
                return ""
            out.append(CallStart(self.calls, new_call_id(), json.loads(f'"{head.group(1)}"')))
            self.args_start = self.args_sent = head.end()
        while self.args_sent == self.args_start < len(text) and text[self.args_start].isspace():
            self.args_start = self.args_sent = self.args_start + 1  # split from the head
        end = _call_end(text, self.args_start)
        args = text[self.args_start : end] if end >= 0 else text[self.args_start :]
        self._send_arguments(text, self.args_start + len(_without_tail(args, end >= 0)), out)
        if end < 0:
            return ""
        self.call, self.calls = None, self.calls + 1
        return text[end + len(CLOSING) :]

    def _send_arguments(self, text: str, upto: int, out: list[Piece]) -> None:
        if upto > self.args_sent:
            out.append(CallArguments(self.calls, text[self.args_sent : upto]))
            self.args_sent = upto


def _call_end(text: str, args_start: int) -> int:
    """Where the call's closing begins: the first one after its arguments' whole JSON value
    and the call object's `}` (-1: not written yet). The arguments may hold the markup in a
    string (a tool that takes text or code)."""
    end = text.find(CLOSING, args_start)
    while end >= 0:
        body = text[args_start:end].rstrip()
        if body.endswith("}") and _is_json(body[:-1]):
            return end
        end = text.find(CLOSING, end + 1)
    return -1


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder's limit
        return False
    return True


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _without_tail(args: str, closed: bool) -> str:
    """A call's arguments without what may be the end of the call: the object's `}`, the
    whitespace around it and (while the call is open) a start of the closing markup."""
    if not closed:
        args = args[: len(args) - _partial_suffix(args, CLOSING)]
    args = args.rstrip()
    if args.endswith("}"):
        args = args[:-1].rstrip()
    return args


@dataclass
class ParsedAnswer:
    """A whole answer: its content (None when it is only calls) and its calls."""

    content: str | None
    calls: list[dict[str, Any]] = field(default_factory=list)


def parse_answer(text: str, text_allowed: bool = True) -> ParsedAnswer:
    parser = CallParser(text_allowed=text_allowed)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    calls: list[dict[str, Any]] = []
    for piece in pieces:
        if isinstance(piece, CallStart):
            calls.append(
                {
                    "id": piece.id,
                    "type": "function",
                    "function": {"name": piece.name, "arguments": ""},
                }
            )
        elif isinstance(piece, CallArguments):
            calls[piece.index]["function"]["arguments"] += piece.text
    if calls or not text_allowed:  # text beside calls is trimmed; none at all is null
        return ParsedAnswer(content.strip() or None, calls)
    return ParsedAnswer(content, calls)


def finish_reason(engine_reason: str | None, has_calls: bool, legacy: bool) -> str | None:
    """ "tool_calls" (or "function_call") when the answer ended in calls."""
    if engine_reason == "stop" and has_calls:
        return "function_call" if legacy else "tool_calls"
    return engine_reason


def piece_delta(piece: Piece, legacy: bool) -> dict[str, Any]:
    """A piece of an answer as a stream chunk's `delta`, in OpenAI's shape: a call's first
    delta has its id, type and name with empty arguments; later ones, argument fragments."""
    if isinstance(piece, Content):
        return {"content": piece.text}
    if isinstance(piece, CallStart):
        function = {"name": piece.name, "arguments": ""}
        if legacy:
            return {"function_call": function}
        call = {"index": piece.index, "id": piece.id, "type": "function", "function": function}
        return {"tool_calls": [call]}
    if legacy:
        return {"function_call": {"arguments": piece.text}}
    return {"tool_calls": [{"index": piece.index, "function": {"arguments": piece.text}}]}


def answer_message(text: str, use: ToolUse | None) -> tuple[dict[str, Any], bool]:
    """A whole answer as the response's `message`; whether it holds calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if use is None or not use.calls_possible:
        return message, False
    parsed = parse_answer(text, not use.required)
    message["content"] = parsed.content
    if parsed.calls and use.legacy:
        message["function_call"] = parsed.calls[0]["function"]
    elif parsed.calls:
        message["tool_calls"] = parsed.calls
    return message, bool(parsed.calls)
