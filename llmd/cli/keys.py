"""`llmd keys add|list|show|revoke|rotate`, `llmd usage [purge]`, `llmd audit`.

They work on the files directly (the keys file, the usage database), so they work whether the
daemon runs or not; a running daemon picks up key changes within a second (a revoked key's
cached answers go then). Each change is written to the audit log as done by `cli:<user>`.
The response cache lives in the daemon (or its Redis): `usage purge --key` asks the running
daemon to delete the key's entries (llmd/cli/client.py), and says so when it cannot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Iterator
from typing import Any

from llmd.auth import keys as k
from llmd.cli.client import DaemonError, daemon_at
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from llmd.usage import listing as ls
from llmd.usage import store as s
from llmd.usage.responses import delete_key


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    add = ksub.add_parser("add", help="create a key and print its secret (shown once)")
    add.add_argument("name")
    add.add_argument("--models", help="comma-separated models the key may use (default: all)")
    add.add_argument("--admin", action="store_true", help="may manage keys, models, usage")
    add.add_argument("--metrics", action="store_true", help="may read /metrics (Prometheus)")
    add.add_argument("--rpm", type=int, help="requests per minute")
    add.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    add.add_argument("--concurrency", type=int, help="requests at the same time")
    add.add_argument("--monthly-tokens", type=int, help="tokens per calendar month (UTC)")
    add.add_argument("--weight", type=int, help="share of a busy engine (default 1)")
    add.add_argument("--log-content", action="store_true", help="store prompts and answers")
    add.add_argument("--expires", type=dt.date.fromisoformat, help="YYYY-MM-DD")
    add.add_argument("--description", default="")
    ksub.add_parser("list", help="list keys (never the secrets)")
    for name, text in (
        ("show", "show one key"),
        (
            "revoke",
            "revoke a key (it stays listed; its stored responses and cached answers are deleted)",
        ),
        ("rotate", "give a key a new secret; the old one stops working"),
    ):
        p = ksub.add_parser(name, help=text)
        p.add_argument("name")
    for p in [keys, *ksub.choices.values()]:
        p.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    keys.set_defaults(run=run_keys)

    usage = sub.add_parser("usage", help="usage records (add `purge` to delete old ones)")
    usage.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    usage.add_argument("--key")
    usage.add_argument("--model")
    usage.add_argument("--since", help="YYYY-MM-DD or ISO time (UTC)")
    usage.add_argument("--until", help="YYYY-MM-DD (inclusive) or ISO time")
    usage.add_argument("--group-by", default="", help="day,key,model (comma-separated)")
    _paging_arguments(usage, "records")
    usub = usage.add_subparsers(dest="usage_command")
    purge = usub.add_parser(
        "purge", help="delete usage records and stored responses older than a date"
    )
    purge.add_argument("--before", required=True, help="YYYY-MM-DD or ISO time (UTC)")
    purge.add_argument(
        "--key", dest="purge_key", help="only this key's (and all its cached answers)"
    )
    purge.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    purge.add_argument(
        "--url", help="the running daemon, whose cache is cleared with --key (default: config)"
    )
    usage.set_defaults(run=run_usage)

    audit = sub.add_parser("audit", help="the audit log")
    audit.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    audit.add_argument("--since", help="YYYY-MM-DD or ISO time (UTC)")
    audit.add_argument("--until", help="YYYY-MM-DD (inclusive) or ISO time")
    audit.add_argument("--actor")
    _paging_arguments(audit, "entries")
    audit.set_defaults(run=run_audit)


def _paging_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help=f"table and json: one page of {what}; csv: every matching one, streamed",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help=f"{what} per page (default {ls.DEFAULT_LIMIT}, at most {ls.MAX_LIMIT}); "
        "with csv, at most this many",
    )
    parser.add_argument("--after", type=int, metavar="ID", help="the page after this id")
    parser.add_argument("--before", type=int, metavar="ID", help="the page before this id")
    parser.add_argument("--order", choices=ls.ORDERS, default="desc", help="desc: newest first")


def _paging(args: argparse.Namespace) -> ls.Paging:
    return ls.Paging(limit=args.limit, after=args.after, before=args.before, order=args.order)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _audit(settings: Settings, action: str, target: str, detail: dict[str, Any] | None) -> None:
    if settings.usage.enabled and settings.usage.database is not None:
        row = s.audit_row(_actor(), action, target, "local", detail)
        s.write_audit_now(settings.usage.database, row)


def _show(page: ls.Page, fmt: str) -> None:
    """A page as JSON (the API's list object) or a table, with a hint to the next page."""
    if fmt == "json":
        print(json.dumps(page.body(), indent=2, default=str))
        return
    _print(page.data)
    if page.has_more:
        body = page.body()
        if body["last_id"] is not None:
            print(f"(more: --after {body['last_id']})", file=sys.stderr)
        else:
            print("(more: narrow with --since/--until, or --format csv)", file=sys.stderr)


def _export(chunks: Iterator[bytes]) -> None:
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
    else:
        cols = list(rows[0])
        cells = [[_cell(c, r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "time" and isinstance(value, float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def run_keys(args: argparse.Namespace, provider: SettingsProvider) -> int:
    settings = provider.current
    path = settings.auth.keys_file
    cmd = args.keys_command
    try:
        if cmd == "add":
            fields = {
                "admin": args.admin,
                "metrics": args.metrics,
                "models": args.models.split(",") if args.models else None,
                "rpm": args.rpm,
                "tpm": args.tpm,
                "concurrency": args.concurrency,
                "monthly_tokens": args.monthly_tokens,
                "weight": args.weight,
                "log_content": args.log_content,
                "expires": args.expires,
                "description": args.description,
            }
            rec, secret = k.add_key(path, args.name, **fields)
            _audit(settings, "key.added", args.name, {"admin": rec.admin})
            print(f"key {args.name!r} added to {path}. Its secret, shown this once:\n{secret}")
        elif cmd == "list":
            keys = k.read_keys_file(path)
            rows = [k.describe(n, r) for n, r in keys.items()]
            _print(
                [
                    {c: row.get(c) for c in ("name", "status", "prefix", "admin", "models")}
                    for row in rows
                ]
            )
        elif cmd == "show":
            keys = k.read_keys_file(path)
            if args.name not in keys:
                raise k.KeyError_(f"no key named {args.name!r}")
            print(json.dumps(k.describe(args.name, keys[args.name]), indent=2))
        elif cmd == "revoke":
            k.revoke_key(path, args.name)
            # Its stored Responses go with it (docs/responses.md); a daemon's in-memory ones
            # (usage off) are not reachable from here: they go at its restart.
            forgotten = 0
            if settings.usage.enabled and settings.usage.database is not None:
                forgotten = delete_key(settings.usage.database, args.name)
            _audit(settings, "key.revoked", args.name, {"responses": forgotten})
            print(f"key {args.name!r} revoked; {forgotten} stored response(s) deleted")
        elif cmd == "rotate":
            _, secret = k.rotate_key(path, args.name)
            _audit(settings, "key.rotated", args.name, None)
            print(f"key {args.name!r} rotated. Its new secret, shown this once:\n{secret}")
    except (k.KeyError_, k.KeysFileError) as exc:
        print(f"llmd keys: {exc}", file=sys.stderr)
        return 1
    return 0


def run_usage(args: argparse.Namespace, provider: SettingsProvider) -> int:
    settings = provider.current
    db = settings.usage.database
    assert db is not None
    try:
        if args.usage_command == "purge":
            purged = s.purge(db, s.parse_time(args.before), args.purge_key)
            detail = {
                "before": args.before,
                "records": purged.records,
                "responses": purged.responses,
            }
            _audit(settings, "usage.purged", args.purge_key or "*", detail)
            print(
                f"deleted {purged.records} usage record(s) and {purged.responses} stored "
                f"response(s) before {args.before}"
            )
            if args.purge_key is not None:
                _forget_cached(settings, args.url, args.purge_key)
            return 0
        q = ls.UsageQuery(
            key=args.key,
            model=args.model,
            since=s.parse_time(args.since) if args.since else None,
            until=s.parse_time(args.until, end=True) if args.until else None,
            group_by=[g for g in args.group_by.split(",") if g],
        )
        paging = _paging(args)
        if args.format == "csv" and q.group_by:
            _export(ls.export_totals_csv(db, q, paging))
        elif args.format == "csv":
            _export(ls.export_csv(db, ls.USAGE, q.filters(), paging))
        elif q.group_by:
            _show(ls.totals(db, q, paging), args.format)
        else:
            _show(ls.page(db, ls.USAGE, q.filters(), paging), args.format)
    except ValueError as exc:
        print(f"llmd usage: {exc}", file=sys.stderr)
        return 2
    return 0


def _forget_cached(settings: Settings, url: str | None, name: str) -> None:
    """A purged key's cached answers go too: they are in the daemon's memory (or its Redis),
    so the running daemon deletes them (`DELETE /api/v1/cache?key=NAME`, audited there)."""
    try:
        daemon = daemon_at(url, lambda: settings)
        answer = daemon.call("/api/v1/cache", "DELETE", query={"key": name}, timeout=30)
        deleted = int(answer["deleted"])
    except (DaemonError, KeyError, TypeError, ValueError) as exc:
        print(
            f"llmd usage: key {name!r}'s cached answers were not deleted ({exc}): they remain "
            f"until their TTL, or `llmd cache clear --key {name}` while the daemon runs",
            file=sys.stderr,
        )
        return
    print(f"deleted {deleted} cache entr{'y' if deleted == 1 else 'ies'} of key {name!r}")


def run_audit(args: argparse.Namespace, provider: SettingsProvider) -> int:
    db = provider.current.usage.database
    assert db is not None
    try:
        q = ls.AuditQuery(
            since=s.parse_time(args.since) if args.since else None,
            until=s.parse_time(args.until, end=True) if args.until else None,
            actor=args.actor,
        )
        if args.format == "csv":
            _export(ls.export_csv(db, ls.AUDIT, q.filters(), _paging(args)))
        else:
            _show(ls.page(db, ls.AUDIT, q.filters(), _paging(args)), args.format)
    except ValueError as exc:
        print(f"llmd audit: {exc}", file=sys.stderr)
        return 2
    return 0
