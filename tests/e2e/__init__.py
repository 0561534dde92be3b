"""End-to-end tests: the real daemon (`llmd serve` in a subprocess) with the real models, driven
over HTTP, mostly with the official `openai` client: the proof of every feature."""
