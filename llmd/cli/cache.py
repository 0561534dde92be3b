"""`llmd cache stats|clear`: the response cache of the running daemon, through its admin API
(`GET`, `DELETE /api/v1/cache`; llmd/cli/client.py: `--url`, `--config`, $LLMD_ADMIN_KEY)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmd.cli.client import DaemonError, daemon_at
from llmd.cli.config import settings_from_args
from llmd.settings_file import ConfigError


def add_parser(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the response cache of the running daemon")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    stats = csub.add_parser("stats", help="entries, bytes, hits, misses, the backend's health")
    clear = csub.add_parser("clear", help="delete every entry, one key's or the shared ones")
    which = clear.add_mutually_exclusive_group()
    which.add_argument("--key", metavar="NAME", help="only this API key's own entries")
    which.add_argument("--shared", action="store_true", help="only the shared scope's entries")
    for p in (stats, clear):
        p.add_argument("--url", help="daemon URL (default: from the config's server.host/port)")
        p.add_argument("--config", type=Path, help="TOML config file")
        p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render(stats: dict[str, Any]) -> str:
    """The numbers of `GET /api/v1/cache` as a short table."""
    health = "healthy" if stats["healthy"] else f"FAILING ({stats['error']})"
    state = "" if stats["enabled"] else ", disabled ([cache] enabled = false)"
    bound = stats["max_bytes"]
    lookups = stats["hits"] + stats["misses"]
    ratio = f"{stats['hits'] / lookups:.0%} of {lookups} lookups" if lookups else "-"
    rows = [
        ("backend", f"{stats['backend']}, {health}{state}"),
        ("entries", "-" if stats["entries"] is None else str(stats["entries"])),
        ("bytes", _size(stats["bytes"]) + (f" of {_size(bound)}" if bound is not None else "")),
        ("hits", str(stats["hits"])),
        ("misses", str(stats["misses"])),
        ("bypasses", str(stats["bypasses"])),
        ("errors", str(stats["errors"])),
        ("hit ratio", ratio),
    ]
    return "\n".join(f"{name:10} {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    try:
        daemon = daemon_at(args.url, lambda: settings_from_args(args).current)
        if args.cache_command == "stats":
            answer = daemon.call("/api/v1/cache")
            print(json.dumps(answer, indent=2) if args.json else render(answer))
            return 0
        # An empty --key "" is the daemon's to refuse, never taken for "every entry".
        keyed = args.key is not None
        query = {"key": args.key} if keyed else {"shared": "true"} if args.shared else {}
        answer = daemon.call("/api/v1/cache", "DELETE", query=query)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            n = answer["deleted"]
            entries = f"cache entr{'y' if n == 1 else 'ies'}"
            if keyed:
                print(f"deleted {n} {entries} of key {args.key!r}")
            else:
                print(f"deleted {n} {'shared ' if args.shared else ''}{entries}")
        return 0
    except DaemonError as exc:
        print(f"llmd: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"llmd: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
