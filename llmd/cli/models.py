"""`llmd models ...`: list, load, unload, reload (through the running daemon's admin API,
llmd/cli/client.py),
plan (offline, from the config and the files), quantize (offline, llama.cpp's quantizer)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import psutil

from llmd.cli.client import Daemon, DaemonError, daemon_at
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


def _daemon(args: argparse.Namespace) -> Daemon:
    return daemon_at(args.url, lambda: settings_from_args(args).current)


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
        daemon = _daemon(args)
        if cmd == "list":
            answer = daemon.call("/api/v1/models")
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                _print_models(answer)
            return 0
        body: dict[str, Any] = {}
        if cmd == "load" and args.keep_alive is not None:
            body["keep_alive"] = args.keep_alive
        answer = daemon.call(f"/api/v1/models/{args.model}/{cmd}", "POST", body)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(f"{answer['name']}: {answer['state']}")
        return 0
    except DaemonError as exc:
        print(f"llmd: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"llmd: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
