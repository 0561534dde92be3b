"""The text a sequence sends (llmd/engine/text.py): stop strings held back until they cannot
match, and UTF-8 characters split across tokens."""

from __future__ import annotations

from llmd.engine.text import TextStream


def test_stop_string_spanning_tokens_is_never_sent() -> None:
    stream = TextStream(["STOP here"])
    out = "".join(stream.push(p.encode()) for p in ["abc ", "ST", "OP", " he", "re tail"])
    assert out == "abc "
    assert stream.stopped


def test_false_stop_prefix_is_released() -> None:
    stream = TextStream(["STOP"])
    parts = [stream.push(p.encode()) for p in ["ab", "ST", "Ox", "yz"]]
    assert parts == ["ab", "", "STOx", "yz"]
    assert stream.flush() == ""


def test_utf8_split_across_tokens() -> None:
    stream = TextStream([])
    data = "é€".encode()
    parts = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(parts) + stream.flush() == "é€"
    assert parts[0] == ""


def test_the_stop_string_that_ended_the_text_is_named() -> None:
    """Anthropic's `stop_sequence` names it; the earliest in the text wins."""
    stream = TextStream(["END", "x"])
    assert stream.matched is None
    assert stream.push(b"ab") == "ab"
    assert stream.push(b"cEN") == "c"
    assert stream.matched is None
    assert stream.push(b"Dx") == ""
    assert stream.stopped and stream.matched == "END"
