"""Unit tests: the pieces of llmd in-process, without a daemon or a model process; llama.cpp is
loaded only by test_llama.py, the test of the backend's own sampling."""
