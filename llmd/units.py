"""Values the config file and the API take in human form: durations and byte sizes.

A duration is Ollama's keep_alive (300, '30s', '5m', '1h30m'; negative = forever); a size is
bytes, '800MB', '12GiB' or a share of RAM ('75%'). The settings model validates its fields
with these parsers, and the code that acts on the values calls them again for the number.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: str | int, total: int) -> int:
    """Bytes from 1234, '800MB', '12GiB' or '75%' (of `total`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    text = str(value).strip().lower().replace(" ", "")
    if text.endswith("%"):
        share = float(text[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"{value!r}: a share of RAM must be in (0%, 100%]")
        return int(total * share / 100)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text)
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"{value!r}: expected bytes, e.g. 8GiB, 800MB, or a share like 75%")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_duration(value: str | float | int) -> float | None:
    """Seconds from 300, '300', '30s', '5m', '1h30m' (Ollama's keep_alive); None = forever.

    Negative means forever, as in Ollama; 0 means unload as soon as the request ends.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r}: expected seconds or a duration like '30s', '5m', '1h'"
                ) from None
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
            seconds = sum(float(n) * scale[u] for n, u in parts)
    if math.isnan(seconds) or seconds == math.inf:
        raise ValueError(f"{value!r}: a duration must be a finite number of seconds")
    return None if seconds < 0 else seconds


def _valid_duration(value: str | float) -> str | float:
    parse_duration(value)
    return value


Duration = Annotated[str | float, AfterValidator(_valid_duration)]
"""A keep-alive as Ollama takes it: seconds or '30s', '5m', '1h30m'; negative = forever."""


def _valid_size(value: str | int) -> str | int:
    parse_size(value, 1 << 30)
    return value


Size = Annotated[str | int, AfterValidator(_valid_size)]
"""A size in bytes as a person writes it: 1234, '800MB', '12GiB', or a share of RAM ('75%')."""
