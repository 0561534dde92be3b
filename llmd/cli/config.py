"""From the command line to settings: `settings_from_args`, which every subcommand uses, and
the reference of every setting that `llmd serve --help` prints."""

from __future__ import annotations

import argparse
import json
import tomllib
import types
import typing
from typing import Any

from pydantic import BaseModel

from llmd.settings import (
    AuthSettings,
    CacheSettings,
    ConsoleSettings,
    EngineSettings,
    LoadingSettings,
    LoggingSettings,
    MemorySettings,
    MetricsSettings,
    ModelSettings,
    SamplingDefaults,
    ServerSettings,
    Settings,
    SpeculativeSettings,
    UsageSettings,
)
from llmd.settings_file import ConfigError, find_config
from llmd.settings_provider import SettingsProvider


def settings_from_args(args: argparse.Namespace) -> SettingsProvider:
    """The settings a subcommand's arguments name: the file (`--config`, else $LLMD_CONFIG,
    else the default places) with the `--set`, `--host` and `--port` overrides on top.
    Read them with `.current`; the daemon reloads through the provider. Raises ConfigError."""
    path = find_config(getattr(args, "config", None))
    return SettingsProvider.from_file(path, overrides(args))


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted setting names to values, from `--set KEY=VALUE` (the value read as TOML, a bare
    word as a string), `--host` and `--port`, for the options the subcommand has."""
    out: dict[str, Any] = {}
    for item in getattr(args, "set", []):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare word is a string
    if getattr(args, "host", None):
        out["server.host"] = args.host
    if getattr(args, "port", None):
        out["server.port"] = args.port
    return out


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # a type with its validator (units.Duration)
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "|".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(
            _type_name(a) for a in typing.get_args(annotation) if a is not type(None)
        )
    return str(annotation).replace("typing.", "")


def settings_reference() -> str:
    """Every setting with its type, default and description, for --help and the docs."""
    out = ["settings (TOML file; see etc/llmd.toml):"]
    sections: list[tuple[str, type[BaseModel]]] = [
        ("", Settings),
        ("server.", ServerSettings),
        ("engine.", EngineSettings),
        ("engine.speculative.", SpeculativeSettings),
        ("auth.", AuthSettings),
        ("usage.", UsageSettings),
        ("memory.", MemorySettings),
        ("loading.", LoadingSettings),
        ("logging.", LoggingSettings),
        ("metrics.", MetricsSettings),
        ("cache.", CacheSettings),
        ("console.", ConsoleSettings),
        ("models.NAME.", ModelSettings),
        ("models.NAME.sampling.", SamplingDefaults),
    ]
    for prefix, model in sections:
        for key, field in model.model_fields.items():
            if issubclass(_bare(field.annotation), BaseModel) or key == "models":
                continue
            default = "" if field.is_required() else f" = {json.dumps(field.default, default=str)}"
            out.append(f"  {prefix}{key} ({_type_name(field.annotation)}){default}")
            if field.description:
                out.append(f"      {field.description}")
    return "\n".join(out)


def _bare(annotation: Any) -> type:
    return annotation if isinstance(annotation, type) else object
