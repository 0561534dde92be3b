"""Unit tests: the pieces of llmd in-process, without model processes or llama.cpp."""
