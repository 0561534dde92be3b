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
