"""The `llmd` command: serve, check-config, keys, usage, audit, models, cache and tls.

`llmd serve --help` lists every setting of the TOML file, generated from the settings model.
One module per group of subcommands: serve.py (`serve`, `check-config`), keys.py (`keys`,
`usage`, `audit`), models.py (`models ...`), cache.py (`cache stats|clear`), tls.py (`tls
self-signed`); config.py turns any of their arguments into settings (`settings_from_args`),
client.py calls the running daemon's admin API.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from llmd import __version__
from llmd.cli import cache, keys, models, serve, tls
from llmd.cli.config import settings_from_args
from llmd.settings_file import ConfigError
from llmd.settings_provider import SettingsProvider

Command = Callable[[argparse.Namespace, SettingsProvider], int]
"""What a subcommand runs (its parser's `run` default), given the settings its arguments name."""

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
  HTTPS       llmd tls self-signed --host NAME --out DIR (as user llmd), then server.tls_cert
              and server.tls_key; or a TLS proxy in front (docs/operations.md)
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
    serve.add_parsers(sub)
    keys.add_parsers(sub)
    models.add_parser(sub)
    cache.add_parser(sub)
    tls.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; output to a pipe closed early (`llmd usage | head`) ends it quietly, with
    the status of a process killed by SIGPIPE, as with other Unix tools."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:
        # Python's recipe: point stdout at /dev/null so that the flush at exit cannot fail
        # again. (SIG_DFL for SIGPIPE instead would also kill `llmd serve` on a closed socket.)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "models":
        return models.run(args)  # reads settings only for the subcommands that need them
    if args.command == "cache":
        return cache.run(args)  # only without --url, for the daemon's address
    if args.command == "tls":
        return tls.run(args)  # reads no settings: it makes the files they will name
    try:
        provider = settings_from_args(args)
    except ConfigError as exc:
        # One self-contained line per problem: that is what `journalctl -u llmd` shows.
        for line in str(exc).splitlines():
            print(f"llmd: invalid configuration: {line}", file=sys.stderr)
        return 2
    command: Command = args.run
    return command(args, provider)
