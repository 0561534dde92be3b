"""`llmd serve` (run the daemon) and `llmd check-config` (validate a config without starting)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from llmd.cli.config import settings_reference
from llmd.settings_file import ConfigError
from llmd.settings_provider import SettingsProvider


def add_parsers(sub: Any) -> None:
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
    serve.set_defaults(run=run_serve)
    check = sub.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("--config", type=Path, help="TOML config file")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace, provider: SettingsProvider) -> int:
    from llmd.daemon import models_dir_problem
    from llmd.tls import configured_pair

    settings, path = provider.current, provider.path
    if problem := models_dir_problem(settings):
        print(f"llmd: {path or 'defaults'}: {problem}", file=sys.stderr)
        return 1
    try:
        pair = configured_pair(settings, path)  # read and loaded as `llmd serve` would
    except ConfigError as exc:
        print(f"llmd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    where = path or "(no file: defaults)"
    print(f"{where}: OK, {len(settings.models)} model(s): {', '.join(settings.models)}")
    if pair is not None:
        print(f"  TLS: {pair}")
    for name in settings.models:
        model_path = settings.model_path(name)
        if not model_path.is_file():
            print(f"  warning: model {name}: file not found: {model_path}", file=sys.stderr)
        draft = settings.draft_path(settings.models[name])
        if draft is not None and not draft.is_file():
            print(f"  warning: model {name}: draft file not found: {draft}", file=sys.stderr)
    return 0


def run_serve(args: argparse.Namespace, provider: SettingsProvider) -> int:
    # Imported here: `llmd keys` and the like should not pay for the daemon's imports.
    from llmd import logs
    from llmd.daemon import StartupError, run

    logs.configure(provider.current)
    log = logging.getLogger("llmd")
    if provider.path is None:
        log.warning("no config file found: running on defaults")
    try:
        run(provider)  # SIGHUP reloads through the provider (when there is a file)
    except ConfigError as exc:  # the TLS pair, read when the daemon starts
        log.error("invalid configuration: %s", exc)
        return 2
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - say what failed in one line, then the details
        log.critical("cannot start: %s: %s", type(exc).__name__, exc, exc_info=True)
        return 1
    return 0
