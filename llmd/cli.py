"""The `llmd` command: `serve` and `check-config`.

`llmd serve --help` lists every setting of the TOML file, generated from the settings model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmd import __version__
from llmd.settings import (
    ConfigError,
    EngineSettings,
    LoggingSettings,
    MetricsSettings,
    ModelSettings,
    SamplingDefaults,
    ServerSettings,
    Settings,
    find_config,
    load_settings,
)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
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
        ("logging.", LoggingSettings),
        ("metrics.", MetricsSettings),
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"llmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the configured models over an OpenAI-compatible API. The config is "
        "--config, else $LLMD_CONFIG, else ./etc/llmd.toml, else /etc/llmd/llmd.toml.",
        epilog=settings_reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set engine.parallel=4 (value parsed as TOML)",
    )
    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("--config", type=Path, help="TOML config file")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in args.set:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = find_config(args.config)
    try:
        settings = load_settings(path, _overrides(args))
    except ConfigError as exc:
        print(f"llmd: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        where = path or "(no file: defaults)"
        print(f"{where}: OK, {len(settings.models)} model(s): {', '.join(settings.models)}")
        for name in settings.models:
            model_path = settings.model_path(name)
            if not model_path.is_file():
                print(f"  warning: model {name}: file not found: {model_path}", file=sys.stderr)
        return 0
    from llmd import logs

    logs.configure(settings)
    if path is None:
        logging.getLogger("llmd").warning("no config file found: running on defaults")
    from llmd.daemon import run

    run(settings)
    return 0
