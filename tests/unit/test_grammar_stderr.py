"""llama.cpp's GBNF parser prints a bad grammar (request text) to stderr itself, outside the
log format and `log_prompts`: compile_grammar (llmd/engine/grammar.py) catches it
(llmd/engine/capture.py) and gives the reason to the client alone. On the real vocabulary,
at the file-descriptor level (pytest's capfd), where fprintf(stderr) writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench.daemon import MODELS, SMOL
from llmd.engine.messages import Grammar


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    import llama_cpp as lc

    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(MODELS / SMOL).encode(), params)
    assert model
    yield lc.llama_model_get_vocab(model)
    lc.llama_model_free(model)


def test_a_bad_grammar_reaches_the_client_not_stderr(
    vocab: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    from llmd.engine.grammar import compile_grammar

    capfd.readouterr()
    error = compile_grammar(vocab, Grammar("gbnf", 'root ::= "SECRET-USER-TEXT" (bad\n'))
    assert error is not None and error.startswith("The grammar could not be parsed as GBNF: ")
    assert "expecting" in error
    err = capfd.readouterr().err
    assert "SECRET-USER-TEXT" not in err and "error parsing grammar" not in err
    # Other writes during the call are passed on; stderr works as before afterwards.
    os.write(2, b"after\n")
    assert compile_grammar(vocab, Grammar("gbnf", 'root ::= "yes" | "no"')) is None
    assert capfd.readouterr().err.endswith("after\n")


def test_other_text_written_meanwhile_is_passed_on() -> None:
    from llmd.engine.grammar import _parser_error

    gbnf = 'root ::= "x" (\nother ::= "y"'
    printed = f"before\nparse: error parsing grammar: expecting ')' at \n\n{gbnf}\nafter\n"
    assert _parser_error(printed, gbnf) == ("expecting ')' at", "before\nafter\n")
    assert _parser_error("just a line\n", gbnf) == ("", "just a line\n")
    # Printed differently than expected: nothing from the parser's line on is passed on.
    assert _parser_error("a\nparse: error parsing grammar: x\n", gbnf) == ("", "a\n")
