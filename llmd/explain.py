"""TOML files checked by a pydantic model: reading one, and explaining its refusal as lines a
person can act on: `file:line: key: reason`.

The config file (llmd/settings.py) and the keys file (llmd/auth/keys.py) are both read with
`read_toml` and explain a refusal the same way, with the line of the offending key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def read_toml(
    path: Path, error: type[Exception], *, missing_ok: bool = False
) -> tuple[str, dict[str, Any]]:
    """The file's text and the tables it holds. Raises `error` (the caller's own exception)
    naming the file when it cannot be read or is not TOML; with `missing_ok`, a missing file
    reads as empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return "", {}
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc


def explain(path: Path | None, text: str, exc: ValidationError) -> str:
    """One line per problem: `path:line: key: reason` (`settings: key: reason` without a
    path; no line when the key cannot be found in `text`)."""
    where = str(path) if path is not None else "settings"
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc) or "(top level)"
        line = find_line(text, loc)
        at = f":{line}" if line else ""
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown setting"
        elif err["type"] == "missing":
            reason = "required setting is missing"
        lines.append(f"{where}{at}: {key}: {reason}")
    return "\n".join(lines)


def find_line(text: str, loc: list[str]) -> int | None:
    """Best-effort line of the key at `loc` (its table header when the key itself is absent)."""
    table: list[str] = []
    best: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if header := re.fullmatch(r"\[\s*([^\]]+?)\s*\]", line):
            table = [part.strip().strip('"') for part in header.group(1).split(".")]
            if table == loc[: len(table)] and best is None:
                best = number
            continue
        if match := re.match(r"([A-Za-z0-9_\"-]+)\s*=", line):
            key = match.group(1).strip('"')
            if [*table, key] == loc[: len(table) + 1] and len(table) + 1 >= len(loc) - 1:
                return number
    return best
