"""What C code writes to stderr itself during one call, caught instead of reaching the log.

llama.cpp reports through its log callback (llmd/engine/llama.py), except its GBNF parser: on
an error it prints the reason *and the whole grammar* with fprintf(stderr), outside the log
format, and a request's grammar is request text (only `server.log_prompts` may put that in a
log). `stderr_captured()` points file descriptor 2 at a temporary file for the length of one
call and hands back what was written (a file, not a pipe: an 8 MB grammar would fill a pipe
that nobody reads while the call runs, and block it).

fd 2 belongs to the whole process, so a line another thread writes meanwhile is caught too:
the caller passes on what is not its call's (`pass_on`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Captured:
    text: str = ""
    """What reached fd 2 during the `with` block (once it has ended)."""


@contextlib.contextmanager
def stderr_captured() -> Iterator[Captured]:
    sys.stderr.flush()
    box = Captured()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield box
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                caught.seek(0)
                box.text = caught.read().decode("utf-8", "replace")
    finally:
        os.close(saved)


def pass_on(text: str) -> None:
    """Write caught text that was not the call's to the real stderr, as it was."""
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
