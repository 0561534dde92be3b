"""The README's Python examples run as written, against the real daemon (its address in
place of the README's 127.0.0.1:8000)."""

from __future__ import annotations

import contextlib
import io
import re
from typing import TYPE_CHECKING

from tests.e2e.conftest import ROOT

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run_block(daemon: Daemon, marker: str) -> list[str]:
    """Run the README's Python block that holds `marker`; the lines it printed."""
    (block,) = [b for b in python_blocks() if marker in b]
    source = block.replace("http://127.0.0.1:8000", daemon.url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    return out.getvalue().splitlines()


def test_the_tool_calling_example(daemon: Daemon) -> None:
    printed = run_block(daemon, "tool_choice=")
    finish, name, arguments = printed[0].split(" ", 2)
    assert (finish, name) == ("tool_calls", "get_weather")
    assert '"Paris"' in arguments and '"celsius"' in arguments
    answer = "\n".join(printed[1:])
    assert answer.strip() and "<tool_" not in answer


def test_the_anthropic_example(daemon: Daemon) -> None:
    printed = run_block(daemon, "anthropic.Anthropic(")
    reason, answer = printed[0].split(" ", 1)
    assert reason in ("end_turn", "max_tokens") and "Paris" in answer
    assert printed[1].strip()  # the streamed answer
    assert int(printed[-1]) > 0  # the prompt's tokens


def test_the_responses_example(daemon: Daemon) -> None:
    printed = run_block(daemon, "previous_response_id=")
    first, follow, *counted = printed
    assert "Paris" in first and "Rome" in follow
    streamed = "\n".join(counted)
    assert all(str(n) in streamed for n in range(1, 6)), streamed


def test_the_cache_example(daemon: Daemon) -> None:
    printed = run_block(daemon, "x-llmd-cache")
    first, again = (line.split(" ", 1) for line in printed)
    assert first[0] in ("miss", "hit") and again[0] == "hit"
    assert again[1] == first[1] and first[1].strip()
