"""`llmd models ...`: list, load, unload, reload (through the running daemon's admin API),
plan (offline, from the config and the files), quantize (offline, llama.cpp's quantizer)."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from llmd.cli.config import settings_from_args
from llmd.settings_file import ConfigError


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="list, load, unload, reload, plan, quantize models")
    msub = models.add_subparsers(dest="models_command", required=True)

    def daemon_cmd(name: str, help_: str, with_model: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = msub.add_parser(name, help=help_)
        if with_model:
            p.add_argument("model", help="model name or alias")
        p.add_argument("--url", help="daemon URL (default: from the config's server.host/port)")
        p.add_argument("--config", type=Path, help="TOML config file")
        p.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
        return p

    daemon_cmd("list", "models, their state and memory (from the running daemon)", False)
    load = daemon_cmd("load", "load a model now")
    load.add_argument("--keep-alive", help="e.g. 10m, 1h, -1 (forever)")
    daemon_cmd("unload", "unload a model (in-flight requests finish first)")
    daemon_cmd("reload", "load a fresh copy next to the current one and switch to it")
    plan = msub.add_parser(
        "plan", help="which models fit together in the memory budget (nothing is loaded)"
    )
    plan.add_argument("--config", type=Path, help="TOML config file")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument("--json", action="store_true")
    q = msub.add_parser("quantize", help="quantize a GGUF model with llama.cpp's quantizer")
    q.add_argument("input", type=Path)
    q.add_argument("output", type=Path)
    q.add_argument("--type", required=True, help="q4_k_m, q5_k_m, q8_0, q4_0, f16 ...")
    q.add_argument(
        "--allow-requantize", action="store_true", help="quantize an already quantized model"
    )
    q.add_argument("--force", action="store_true", help="replace an existing output file")
    q.add_argument("--threads", type=int, default=0, help="0 = all cores")


def _url(args: argparse.Namespace) -> tuple[str, ssl.SSLContext | None]:
    """The daemon's URL, and for HTTPS from the config the context trusting its certificate."""
    if args.url:
        return str(args.url).rstrip("/"), None
    server = settings_from_args(args).current.server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    if server.tls_cert is None:
        return f"http://{host}:{server.port}", None
    from llmd.tls import pinned_client_context

    try:
        return f"https://{host}:{server.port}", pinned_client_context(server.tls_cert)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"llmd: cannot read {server.tls_cert} (server.tls_cert): {exc}") from None


def _call(
    url: str, method: str, body: dict[str, Any] | None = None, tls: ssl.SSLContext | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=600, context=tls) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:  # noqa: BLE001 - not our error shape: show the status
            message = exc.reason
        raise SystemExit(f"llmd: {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"llmd: cannot reach the daemon at {url}: {exc.reason}") from None


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _print_models(listing: dict[str, Any]) -> None:
    mem = listing["memory"]
    print(
        f"memory: {_mib(mem['used_bytes'])} used of a {_mib(mem['budget_bytes'])} budget; "
        f"system {_mib(mem['system_available_bytes'])} available"
    )
    print(f"{'name':32} {'state':10} {'quant':8} {'file':>9} {'estimated':>10} {'measured':>9}")
    for m in listing["models"]:
        print(
            f"{m['name'][:32]:32} {m['state']:10} {m['quantization'] or '-':8} "
            f"{_mib(m['file_size_bytes']):>9} {_mib(m['memory']['estimated_bytes']):>10} "
            f"{_mib(m['memory']['measured_bytes']):>9}" + (f"  {m['error']}" if m["error"] else "")
        )


def run(args: argparse.Namespace) -> int:
    cmd = args.models_command
    try:
        if cmd == "quantize":
            from llmd.quantize import QuantizeError, quantize

            try:
                quantize(
                    args.input,
                    args.output,
                    args.type,
                    args.allow_requantize,
                    args.force,
                    args.threads,
                )
            except QuantizeError as exc:
                print(f"llmd: {exc}", file=sys.stderr)
                return 2
            return 0
        if cmd == "plan":
            from llmd.plan import inputs_from_disk, make_plan, render

            settings = settings_from_args(args).current
            vm = psutil.virtual_memory()
            plan = make_plan(
                settings,
                inputs_from_disk(settings),
                settings.memory.budget_bytes(vm.total),
                vm.total,
                vm.available,
            )
            print(json.dumps(plan, indent=2) if args.json else render(plan))
            return 0
        url, tls = _url(args)
        base = url + "/api/v1/models"
        if cmd == "list":
            answer = _call(base, "GET", tls=tls)
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                _print_models(answer)
            return 0
        body: dict[str, Any] = {}
        if cmd == "load" and args.keep_alive is not None:
            body["keep_alive"] = args.keep_alive
        answer = _call(f"{base}/{args.model}/{cmd}", "POST", body, tls)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(f"{answer['name']}: {answer['state']}")
        return 0
    except ConfigError as exc:
        print(f"llmd: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
