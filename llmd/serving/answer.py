"""One chat answer read as pieces: what the APIs translated onto chat completions (OpenAI's
Responses, Anthropic's Messages) write out in their own shapes.

Those APIs have no `n`: a request is one answer. `Answer` follows the run's deltas and splits
them into content text and tool calls (llmd/serving/toolcalls.py's parser, the one chat
completions streams with), and keeps how the answer ended: the engine's reason ("stop",
"length"), the stop string that ended it, whether it ended in calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llmd.serving.base import Run
from llmd.serving.toolcalls import CallArguments, CallParser, CallStart, Content, Piece
from llmd.tools import ToolUse


@dataclass
class Call:
    """A whole call, collected from its pieces."""

    id: str
    name: str
    arguments: str = ""


@dataclass
class Answer:
    run: Run
    use: ToolUse | None
    finish_reason: str | None = None
    """The engine's: "stop" (end of turn, a stop string, or calls made) or "length"."""
    stop_sequence: str | None = None
    """The client's stop string that ended the answer (None: the model ended its turn)."""
    made_calls: bool = False
    client_stops: list[str] = field(default_factory=list)
    """The stop strings the client gave (others, such as an imitated call's opening, are
    the server's own: an answer they end is an end of turn)."""
    asked_max_tokens: int | None = None
    """The token limit the request gave (None: as many as fit)."""
    text: str = ""
    calls: list[Call] = field(default_factory=list)
    """Filled as the pieces go by: the whole answer once `pieces` is exhausted."""
    _held: str = ""

    @property
    def out_of_room(self) -> bool:
        """Ended by the context's room, short of the limit asked (a limit the engine cut to
        the room: `up_to_room`)."""
        started, asked = self.run.started, self.asked_max_tokens
        return (
            self.finish_reason == "length"
            and asked is not None
            and bool(started)
            and started[0].max_tokens < asked
        )

    async def pieces(self) -> AsyncIterator[Piece]:
        """The answer a piece at a time, as the model writes it."""
        parser = None
        if self.use is not None and self.use.calls_possible:
            parser = CallParser(text_allowed=not self.use.required)
        async for _, delta in self.run.deltas():
            if parser is None:
                pieces: list[Piece] = [Content(delta.text)] if delta.text else []
            else:
                pieces = parser.feed(delta.text)
                if delta.finish_reason is not None:
                    pieces += parser.finish()
            if parser is not None:
                pieces = self._trimmed(pieces, delta.finish_reason is not None)
            for piece in pieces:
                self._keep(piece)
                yield piece
            if delta.finish_reason is not None:
                self.finish_reason = delta.finish_reason
                self.made_calls = parser is not None and parser.made_calls
                if delta.stop_sequence is not None and delta.stop_sequence in self.client_stops:
                    self.stop_sequence = delta.stop_sequence

    def _trimmed(self, pieces: list[Piece], last: bool) -> list[Piece]:
        """Text's trailing whitespace held back while a call may follow: dropped if one does
        (chat completions trims text beside calls too), sent with what comes next otherwise."""
        out: list[Piece] = []
        for piece in pieces:
            if isinstance(piece, Content):
                text = self._held + piece.text
                body = text.rstrip()
                self._held = text[len(body) :]
                if body:
                    out.append(Content(body))
                continue
            if isinstance(piece, CallStart):
                self._held = ""
            out.append(piece)
        if last and self._held:
            out.append(Content(self._held))
            self._held = ""
        return out

    def _keep(self, piece: Piece) -> None:
        if isinstance(piece, Content):
            self.text += piece.text
        elif isinstance(piece, CallStart):
            self.calls.append(Call(piece.id, piece.name))
        elif isinstance(piece, CallArguments):
            self.calls[piece.index].arguments += piece.text
