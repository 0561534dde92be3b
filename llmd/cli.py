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

from llmd import __version__, models_cli
from llmd.auth import cli as admin_cli
from llmd.settings import (
    AuthSettings,
    ConfigError,
    EngineSettings,
    LoadingSettings,
    LoggingSettings,
    MemorySettings,
    MetricsSettings,
    ModelSettings,
    SamplingDefaults,
    ServerSettings,
    Settings,
    UsageSettings,
    find_config,
)
from llmd.settings_provider import SettingsProvider


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # a type with its validator (settings.Duration)
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
        ("auth.", AuthSettings),
        ("usage.", UsageSettings),
        ("memory.", MemorySettings),
        ("loading.", LoadingSettings),
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


OPERATIONS = """\
running llmd as a service (the Debian package; details in docs/operations.md):
  install     apt install ./llmd_VERSION_amd64.deb    (starts llmd.service, as user llmd)
  config      /etc/llmd/llmd.toml; check it with: llmd check-config --config /etc/llmd/llmd.toml
  add a model copy the .gguf into /var/lib/llmd/models: served under its file name once
              complete, loaded on first use; a [models.NAME] table (then systemctl reload
              llmd) gives it another name, aliases and settings
  control     systemctl start|stop|restart llmd
              systemctl reload llmd   re-reads the config without dropping requests; a broken
                                      file is refused and the running config stays
              systemctl status llmd   state, models, requests and memory in one line
  logs        journalctl -u llmd  (-f to follow, -b for this boot)
  upgrade     apt install ./llmd_NEWVERSION_amd64.deb  (your config edits are kept)
  uninstall   apt remove llmd  (keeps config and models)
              apt purge llmd   (also deletes /etc/llmd, /var/lib/llmd with the models, the user)
  API         http://127.0.0.1:8000/v1 (OpenAI-compatible), /health, /ready, /api/v1/health
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmd",
        description=__doc__.splitlines()[0],
        epilog=OPERATIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    admin_cli.add_parsers(sub)
    models_cli.add_parser(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    import tomllib

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "models":
        return models_cli.run(args)
    path = find_config(getattr(args, "config", None))
    try:
        provider = SettingsProvider.from_file(path, _overrides(args))
    except ConfigError as exc:
        # One self-contained line per problem: that is what `journalctl -u llmd` shows.
        for line in str(exc).splitlines():
            print(f"llmd: invalid configuration: {line}", file=sys.stderr)
        return 2
    settings = provider.current
    if args.command == "keys":
        return admin_cli.run_keys(args, settings)
    if args.command == "usage":
        return admin_cli.run_usage(args, settings)
    if args.command == "audit":
        return admin_cli.run_audit(args, settings)
    from llmd.daemon import StartupError, models_dir_problem, run

    if args.command == "check-config":
        if problem := models_dir_problem(settings):
            print(f"llmd: {path or 'defaults'}: {problem}", file=sys.stderr)
            return 1
        where = path or "(no file: defaults)"
        print(f"{where}: OK, {len(settings.models)} model(s): {', '.join(settings.models)}")
        for name in settings.models:
            model_path = settings.model_path(name)
            if not model_path.is_file():
                print(f"  warning: model {name}: file not found: {model_path}", file=sys.stderr)
        return 0
    from llmd import logs

    logs.configure(settings)
    log = logging.getLogger("llmd")
    if path is None:
        log.warning("no config file found: running on defaults")
    try:
        run(provider)  # SIGHUP reloads through the provider (when there is a file)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - say what failed in one line, then the details
        log.critical("cannot start: %s: %s", type(exc).__name__, exc, exc_info=True)
        return 1
    return 0
