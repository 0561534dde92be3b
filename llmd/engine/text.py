"""Turning a sequence's token pieces into the text a client sees, stop strings withheld.

Two things make this more than concatenation: a UTF-8 character can be split across tokens,
and a stop string can be split across tokens too. Text that might be the start of a stop
string is held back until the next token shows whether it was; a stop string is never sent.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: list[str]) -> None:
        self._stops = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False
        self.matched: str | None = None
        """The stop string that ended the text (Anthropic's `stop_sequence` names it)."""

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; returns the text that is now safe to send."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        found = [(i, s) for s in self._stops if (i := self._held.find(s)) >= 0]
        if found:
            cut, self.matched = min(found)
            out, self._held = self._held[:cut], ""
            self.stopped = True
            return out
        keep = self._partial_stop_suffix()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def flush(self) -> str:
        """The sequence ended without a stop string: release what was held back."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _partial_stop_suffix(self) -> int:
        """Length of the longest end of the held text that begins some stop string."""
        held = self._held
        for size in range(min(len(held), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = held[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0
