"""The console's files (llmd/console/pages.py and static/): what is served, and how."""

from __future__ import annotations

import re
from pathlib import Path

from llmd.console.pages import STATIC, console_files, content_type


def test_every_file_is_served_by_name_and_the_shell_at_the_root() -> None:
    files = console_files()
    assert files["/ui/"] == STATIC / "index.html"
    on_disk = {p for p in STATIC.rglob("*") if p.is_file()}
    assert set(files.values()) == on_disk
    assert content_type(Path("a.js")) == "text/javascript; charset=utf-8"
    assert content_type(Path("a.css")) == "text/css; charset=utf-8"
    assert content_type(Path("a.html")) == "text/html; charset=utf-8"


def test_the_shell_preloads_every_module() -> None:
    """Each module is asked for at once with the shell, not as its importer is parsed: a
    first visit's overview waits on one round trip for scripts, not three."""
    shell = (STATIC / "index.html").read_text()
    entry = re.findall(r'<script type="module" src="/ui/([\w.]+)"', shell)
    preloaded = re.findall(r'<link rel="modulepreload" href="/ui/([\w.]+)"', shell)
    modules = sorted(p.name for p in STATIC.glob("*.js"))
    assert entry == ["app.js"]
    assert sorted(entry + preloaded) == modules
    assert "<script>" not in shell and "style=" not in shell  # the CSP allows neither
