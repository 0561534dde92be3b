"""Tool calling side by side: llmd against `llama-server --jinja`, on the same model file,
threads and OpenMP policy (docs/benchmarks.md, "Tool calling").

Validity. 200 sampled answers (temperature 0.7, seeds 0-199, 16 clients at once, 160 tokens at
most) to office questions, with the five tools of bench/toolset.py (enums, nested objects,
arrays, required fields, a date format, numeric bounds), asked with `tool_choice: "required"`
and `parallel_tool_calls: false`, then 100 with "auto". Each answer is read as the
OpenAI SDK reads it and its call checked: a tool that exists, arguments that parse as JSON
and validate against the tool's schema (jsonschema, formats checked). Reported per side: the
share valid, why the others are not (no call, bad JSON, the schema keyword broken, several
calls), finish reasons, answers with the call format's markup left in `content`.

Sides. `llmd`; `llama-server`: `--jinja` with the model's own template; `llama-server+template`:
`--jinja --chat-template-file` a template that knows tools in Hermes' format, as llmd's
(tests/fixtures/qwen2.5-tools.jinja: Qwen 2.5's, ChatML as SmolLM2's): what a llama-server
user does to get calls from a model whose template knows none.

Cost. One tool whose call cannot close within 64 tokens (an expense report of at least 12
items), `tool_choice: "required"`, temperature 0.7, at 1 client (4 requests one after the
other) and 16 at once; against the same prompt free, with `ignore_eos`: llmd gets the tools
in the system prompt as it writes them itself, llama-server the tools with `tool_choice:
"none"` (its template renders them, no grammar). Held and free answers then run to 64 tokens
on the same prompt (both counts are reported): they differ by the grammar alone. Reported:
output tokens/s, inter-token latency (ITL) p50, and the grammar's cost per token, held / free
ITL p50 (the issue's target: at most 1.05). Validity is measured in the first repeat, cost in
every repeat (3 by default, the first place alternating).

    .venv/bin/python -m bench.tools [--model smollm2|gemma3|PATH] [--repeats N] [--json OUT]
        [--sides llmd,llama-server,llama-server+template] [--samples N] [--auto-samples N]

Needs llama-server from `scripts/bench` (~/.cache/llmd-bench/llama.cpp-0.3.36/bin);
`--sides llmd` runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import jsonschema
import openai
from openai.types.chat.chat_completion import Choice

from bench.daemon import ROOT
from bench.harness import Server, log, parse_peer_args, peer_setup, start, take_turn
from bench.report import spread, write_results
from bench.toolset import COST_ASK, COST_TOOL, QUESTIONS, SCHEMAS, SYSTEM, TOOLS
from llmd.serving.toolcalls import tools_prompt
from llmd.tools import Tool, plan_tools

CLIENTS = 16
TEMPERATURE = 0.7
CALL_TOKENS = 160
"""max_tokens of the validity answers: room for the longest call (a meeting, ~90 tokens)."""
COST_TOKENS = 64
ONE_CLIENT_REQUESTS = 4
TEMPLATE = ROOT / "tests" / "fixtures" / "qwen2.5-tools.jinja"
MARKUP = ("<tool_call", "</tool_call", '"arguments"')
"""Text of a call format that, found in `content`, means a call was not read as one."""
FAILURES_KEPT = 4
"""Answers kept in the results for each reason of failure."""


@dataclass(frozen=True)
class Side:
    name: str
    label: str
    """The contender bench.harness starts."""
    flags: tuple[str, ...] = ()
    cost: bool = True
    """Measured for cost too (a side with no grammar has none to measure)."""


def sides(template: Path) -> dict[str, Side]:
    return {
        "llmd": Side("llmd", "llmd"),
        # SmolLM2's template knows no tools: llama-server has no call format to hold.
        "llama-server": Side("llama-server", "llama-server", ("--jinja",), cost=False),
        "llama-server+template": Side(
            "llama-server+template",
            "llama-server",
            ("--jinja", "--chat-template-file", str(template.resolve())),
        ),
    }


# -- validity ----------------------------------------------------------------------------------


def judge(seed: int, choice: Choice) -> dict[str, Any]:
    """One answer: its finish, calls, and verdict ("valid", or why not)."""
    message = choice.message
    calls = message.tool_calls or []
    content = message.content or ""
    out: dict[str, Any] = {
        "seed": seed,
        "finish": choice.finish_reason,
        "calls": len(calls),
        "markup_in_content": any(m in content for m in MARKUP),
    }
    verdict = "valid" if calls else "no call"
    for call in calls:
        fn = getattr(call, "function", None)
        name = fn.name if fn is not None else None
        if name not in SCHEMAS or fn is None:
            verdict = "unknown tool"
            out["detail"] = str(name)
            break
        try:
            arguments = json.loads(fn.arguments)
        except ValueError:
            verdict = "bad JSON"
            out["detail"] = fn.arguments[:300]
            break
        validator = jsonschema.Draft202012Validator(
            SCHEMAS[name], format_checker=jsonschema.FormatChecker()
        )
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            verdict = f"schema: {error.validator}"
            out["detail"] = f"{name}: {error.message[:200]}; {fn.arguments[:300]}"
            break
    else:
        if len(calls) > 1:
            verdict = "several calls"
    out["verdict"] = verdict
    if verdict != "valid" and content:
        out["content"] = content[:300]
    return out


async def validity(client: openai.AsyncOpenAI, tool_choice: str, samples: int) -> dict[str, Any]:
    """`samples` answers with TOOLS and `tool_choice`, 16 at once, judged and counted."""
    slots = asyncio.Semaphore(CLIENTS)

    async def one(seed: int) -> dict[str, Any]:
        question = QUESTIONS[seed % len(QUESTIONS)]
        body: dict[str, Any] = {
            "model": "bench",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            "tools": TOOLS,
            "tool_choice": tool_choice,
            "parallel_tool_calls": False,
            "temperature": TEMPERATURE,
            "seed": seed,
            "max_tokens": CALL_TOKENS,
        }
        async with slots:
            try:
                r = await client.chat.completions.create(**body)
            except openai.APIStatusError as exc:
                return {
                    "seed": seed,
                    "verdict": f"error {exc.status_code}",
                    "finish": None,
                    "calls": 0,
                    "markup_in_content": False,
                    "detail": str(exc)[:300],
                }
        return judge(seed, r.choices[0])

    t = time.perf_counter()
    answers = await asyncio.gather(*(one(seed) for seed in range(samples)))
    wall = time.perf_counter() - t
    verdicts = Counter(a["verdict"] for a in answers)
    called = [a for a in answers if a["calls"]]
    valid_called = sum(a["verdict"] in ("valid", "several calls") for a in called)
    finished = [a for a in answers if a["finish"] != "length"]
    kept: Counter[str] = Counter()
    failures = []
    for a in answers:  # a few of each kind; all with markup in content or not cut short
        keep = kept[a["verdict"]] < FAILURES_KEPT or a["markup_in_content"]
        keep = keep or a["finish"] != "length"
        if a["verdict"] != "valid" and keep:
            kept[a["verdict"]] += 1
            failures.append(a)
    return {
        "answers": samples,
        "valid": verdicts["valid"],
        "valid_share": verdicts["valid"] / samples,
        # The grammar holds what is written; an answer cut by max_tokens is a call unfinished.
        "cut_by_max_tokens": samples - len(finished),
        "valid_of_finished": (
            sum(a["verdict"] == "valid" for a in finished) / len(finished) if finished else None
        ),
        "called": len(called),
        "called_share": len(called) / samples,
        "valid_of_called": valid_called / len(called) if called else None,
        "verdicts": dict(verdicts.most_common()),
        "finish_reasons": dict(Counter(str(a["finish"]) for a in answers).most_common()),
        "markup_in_content": sum(a["markup_in_content"] for a in answers),
        "seconds": wall,
        "failures": failures,
    }


# -- cost ---------------------------------------------------------------------------------------


def cost_bodies(side: Side, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The held request and the free one of the same prompt (see the module's docstring)."""
    ask = f"{COST_ASK} (request {seed})"
    held: dict[str, Any] = {
        "model": "bench",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask}],
        "tools": [COST_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": TEMPERATURE,
        "seed": seed,
        "max_tokens": COST_TOKENS,
    }
    if side.label == "llmd":
        use = plan_tools([Tool.model_validate(COST_TOOL)], "required", False, None, None)
        assert use is not None
        system = f"{SYSTEM}\n\n{tools_prompt(use)}"  # as llmd writes it for SmolLM2, Gemma
        free = {k: v for k, v in held.items() if k not in ("tools", "tool_choice")}
        free.pop("parallel_tool_calls")
        free["messages"] = [{"role": "system", "content": system}, held["messages"][1]]
    else:
        free = {**held, "tool_choice": "none"}
    free["extra_body"] = {"ignore_eos": True}
    return held, free


async def _stream(client: openai.AsyncOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    stream = await client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    times: list[float] = []
    tokens = prompt = 0
    finish = None
    called = False
    async for chunk in stream:
        if chunk.usage is not None:
            tokens, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
        for choice in chunk.choices:
            delta = choice.delta
            calls = delta.tool_calls or []
            called = called or bool(calls)
            if delta.content or any(c.function and c.function.arguments for c in calls):
                times.append(time.perf_counter())
            finish = choice.finish_reason or finish
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"tokens": tokens, "prompt": prompt, "gaps": gaps, "chunks": len(times),
            "length": finish == "length", "called": called}  # fmt: skip


async def cost(client: openai.AsyncOpenAI, side: Side, rep: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for clients in (1, CLIENTS):
        for kind in ("free", "held") if rep % 2 == 0 else ("held", "free"):
            pick = 0 if kind == "held" else 1
            n = ONE_CLIENT_REQUESTS if clients == 1 else clients
            bodies = [cost_bodies(side, seed)[pick] for seed in range(n)]
            t = time.perf_counter()
            if clients == 1:
                runs = [await _stream(client, body) for body in bodies]
            else:
                runs = await asyncio.gather(*(_stream(client, body) for body in bodies))
            wall = time.perf_counter() - t
            key = f"c{clients}.{kind}"
            tokens = sum(r["tokens"] for r in runs)
            out[f"{key}.tok_s"] = tokens / wall
            out[f"{key}.itl_p50_ms"] = statistics.median(g for r in runs for g in r["gaps"]) * 1e3
            out[f"{key}.length_finishes"] = sum(r["length"] for r in runs)
            out[f"{key}.answers"] = len(runs)
            # Held answers that started a call within max_tokens (llama-server lets text
            # come before a "required" call: text written under a grammar that allows it).
            out[f"{key}.answers_calling"] = sum(r["called"] for r in runs)
            out[f"{key}.prompt_tokens"] = statistics.mean(r["prompt"] for r in runs)
            # Deltas per output token: near 1 when every token is streamed as written.
            out[f"{key}.chunks_per_token"] = sum(r["chunks"] for r in runs) / max(tokens, 1)
        out[f"c{clients}.grammar_cost"] = (
            out[f"c{clients}.held.itl_p50_ms"] / out[f"c{clients}.free.itl_p50_ms"]
        )
    return out


# -- turns --------------------------------------------------------------------------------------


def _turn(rep: int, side: Side, args: argparse.Namespace, server: Server) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        out: dict[str, Any] = {}
        try:
            if rep == 0 and args.samples:
                out["required"] = await validity(client, "required", args.samples)
                log(f"{side.name}: required {out['required']['valid_share']:.1%} valid")
                if args.auto_samples:
                    out["auto"] = await validity(client, "auto", args.auto_samples)
                    log(f"{side.name}: auto called {out['auto']['called_share']:.1%}")
            if side.cost:
                # Warm up, the grammar path included, and the prompt's prefix cached for held
                # and free alike (the validity answers may have evicted it).
                for body in cost_bodies(side, 99):
                    await _stream(client, body)
                out["cost"] = await cost(client, side, rep)
        finally:
            await client.close()
        return out

    return asyncio.run(go())


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sides", default="llmd,llama-server,llama-server+template",
        help="comma-separated: llmd, llama-server, llama-server+template",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=200, help="validity, 'required'")
    parser.add_argument("--auto-samples", type=int, default=100, help="validity, 'auto'")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="llama-server+template's")


def _print_validity(name: str, choice: str, v: dict[str, Any]) -> None:
    def share(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    print(
        f"{name} {choice}: {v['valid']}/{v['answers']} valid ({v['valid_share']:.1%}), "
        f"called {v['called_share']:.1%}, valid of called {share(v['valid_of_called'])}, "
        f"cut by max_tokens {v['cut_by_max_tokens']}, "
        f"valid of the others {share(v['valid_of_finished'])}, "
        f"markup in content {v['markup_in_content']}, {v['seconds']:.0f} s\n"
        f"  verdicts {v['verdicts']}\n  finish {v['finish_reasons']}",
        flush=True,
    )


def main() -> int:
    args = parse_peer_args("bench.tools", __doc__, _options)
    table = sides(args.template)
    chosen = [table[name] for name in args.sides.split(",")]
    valid: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in chosen if s.cost}
    started = time.time()
    load_start = os.getloadavg()
    with TemporaryDirectory(prefix="llmd-bench-") as tmp:
        setup = peer_setup(args, Path(tmp), CLIENTS)
        for rep in range(args.repeats):
            for side in chosen if rep % 2 == 0 else chosen[::-1]:
                if rep > 0 and not side.cost:
                    continue
                server = start(side.label, setup, side.flags)
                result = take_turn(server, partial(_turn, rep, side, args))
                print(f"repeat {rep + 1}: {side.name}", flush=True)
                for choice in ("required", "auto"):
                    if choice in result:
                        valid.setdefault(side.name, {})[choice] = result[choice]
                        _print_validity(side.name, choice, result[choice])
                if "cost" in result:
                    runs[side.name].append(result["cost"])
                    for key, value in result["cost"].items():
                        print(f"  {key:28s} {value:8.2f}")
    summary = spread(runs) if all(runs.values()) and runs else {}
    for name in runs:
        for clients in (1, CLIENTS):
            c = summary[f"{name}.c{clients}.grammar_cost"]["median"]
            print(f"{name}, {clients} clients: grammar cost (held / free ITL p50) = {c:.3f}")
    write_results(
        args.json,
        "tools",
        args,
        sides={s.name: {"label": s.label, "flags": list(s.flags)} for s in chosen},
        clients=CLIENTS,
        temperature=TEMPERATURE,
        call_tokens=CALL_TOKENS,
        cost_tokens=COST_TOKENS,
        one_client_requests=ONE_CLIENT_REQUESTS,
        repeats=args.repeats,
        minutes=(time.time() - started) / 60,
        load_average={"start": load_start, "end": os.getloadavg()},
        tools=TOOLS,
        cost_tool=COST_TOOL,
        validity=valid,
        summary=summary,
        runs=runs,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
