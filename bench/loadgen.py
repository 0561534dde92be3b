"""Load generator for OpenAI-compatible streaming endpoints.

Drives N concurrent streaming clients against any server speaking the OpenAI
HTTP API (llmd, llama.cpp's llama-server, llama-cpp-python, ...) and reports
time to first token, per-token latency, end-to-end latency and throughput.

    scripts/loadgen --url http://127.0.0.1:8000/v1 --concurrency 1,2,4,8 --json out.json

Importable as a library: ``from bench.loadgen import LoadConfig, run_load``.
"""

import argparse
import asyncio
import json
import random
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import aiohttp

from bench.loadstats import (
    LatencyStats,
    RequestResult,
    RunResult,
    markdown_table,
    percentile,
)

# Short, common English words: most tokenizers map each to a single token, so
# a prompt of N words is roughly N tokens without needing the model's tokenizer.
WORDS = (
    "the of and to in is it you that he was for on are as with his they at be this"
    " have from or one had by word but not what all were we when your can said there"
    " use an each which she do how their if will up other about out many then them"
    " these so some her would make like him into time has look two more write go see"
    " number no way could people my than first water been call who oil its now find"
    " long down day did get come made may part over new sound take only little work"
    " know place year live me back give most very after thing our just name good"
    " sentence man think say great where help through much before line right too mean"
    " old any same tell boy follow came want show also around form three small set put"
    " end does another well large must big even such because turn here why ask went"
    " men read need land different home us move try kind hand picture again change off"
).split()

REFUSAL_STATUSES = frozenset({429, 503})
MAX_ERROR_SAMPLES = 5
Message = dict[str, str]


@dataclass
class LoadConfig:
    """Everything one run needs; ``model=None`` means ask the server."""

    url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: str | None = None
    mode: str = "stream"  # "stream" | "multiturn"
    endpoint: str = "chat"  # "chat" | "completions"
    concurrency: int = 1  # in multiturn mode: the number of conversations
    requests: int | None = None  # stream mode only; default concurrency * 2
    turns: int = 4  # multiturn mode only
    prompt_tokens: int = 150
    max_tokens: int = 128
    system_prompt_tokens: int = 0
    ignore_eos: bool = False
    warmup: int = 1
    timeout: float = 300.0
    label: str = ""
    # Mixed into every prompt seed so runs in a sweep don't hit each other's
    # cached prefixes; identical salts give identical prompts across contenders.
    seed_salt: str = ""
    # Merged into every request body: a peer's own knobs (e.g. a logit_bias standing in for
    # ignore_eos on a server that lacks it).
    extra_body: dict[str, Any] = field(default_factory=dict)
    cafile: str | None = None  # an https URL whose certificate this file holds (self-signed)


def make_text(n_words: int, seed: str) -> str:
    # String seeds are hashed with SHA-512 by `random`, so prompts are stable
    # across processes regardless of PYTHONHASHSEED.
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(max(n_words, 1)))


INSTRUCTION = "Write a long story using the words above."


def make_user_prompt(n_words: int, seed: str) -> str:
    # Random words first and the instruction last: a shared leading instruction
    # would give every request a small common prefix and blur the cache numbers.
    words = make_text(n_words - len(INSTRUCTION.split()), seed)
    return f"{words}\n{INSTRUCTION}"


def flatten_messages(messages: Sequence[Message]) -> str:
    """Render a chat history as a plain transcript for the completions endpoint."""
    parts: list[str] = []
    for msg in messages:
        if msg["role"] == "system":
            parts.append(msg["content"] + "\n\n")
        else:
            speaker = "User" if msg["role"] == "user" else "Assistant"
            parts.append(f"{speaker}: {msg['content']}\n")
    return "".join(parts) + "Assistant:"


def chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if "text" in choice:
        return str(choice["text"] or "")
    delta = choice.get("delta") or {}
    # Reasoning models stream their thinking in reasoning_content; those are
    # generated tokens too, and ignoring them would inflate TTFT enormously.
    return str(delta.get("content") or "") + str(delta.get("reasoning_content") or "")


def _cached_tokens(usage: dict[str, Any] | None, chunk_timings: dict[str, Any] | None) -> int:
    details = (usage or {}).get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        return int(details["cached_tokens"])
    # llama-server reports prefix-cache hits only in its own `timings` block.
    if chunk_timings and chunk_timings.get("cache_n") is not None:
        return int(chunk_timings["cache_n"])
    return 0


class Client:
    """Sends streaming requests for one run and times them."""

    def __init__(self, session: aiohttp.ClientSession, cfg: LoadConfig, model: str) -> None:
        self.session = session
        self.cfg = cfg
        self.model = model
        path = "chat/completions" if cfg.endpoint == "chat" else "completions"
        self.endpoint_url = f"{cfg.url.rstrip('/')}/{path}"
        self.headers = auth_headers(cfg.api_key)

    def body(self, messages: Sequence[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self.cfg.max_tokens,
            # Greedy decoding keeps output lengths comparable across contenders.
            "temperature": 0.0,
        }
        if self.cfg.endpoint == "chat":
            body["messages"] = list(messages)
        else:
            body["prompt"] = flatten_messages(messages)
        if self.cfg.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.cfg.extra_body)
        return body

    async def send(self, messages: Sequence[Message]) -> RequestResult:
        res = RequestResult()
        try:
            await self._stream(self.body(messages), res)
        except TimeoutError:
            res.error = f"timeout after {self.cfg.timeout:g}s"
        except Exception as exc:  # a benchmark records failures, it never dies on one
            res.error = f"{type(exc).__name__}: {exc}"
        res.ok = res.error is None
        return res

    async def _stream(self, body: dict[str, Any], res: RequestResult) -> None:
        arrivals: list[float] = []
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        timings: dict[str, Any] | None = None
        start = res.started_s = time.perf_counter()
        async with asyncio.timeout(self.cfg.timeout):
            async with self.session.post(
                self.endpoint_url, json=body, headers=self.headers
            ) as resp:
                res.status = resp.status
                if resp.status != 200:
                    detail = (await resp.text())[:200].strip()
                    res.refused = resp.status in REFUSAL_STATUSES
                    res.error = f"HTTP {resp.status}: {detail}"
                    return
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, SSE comments, event: lines
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        res.error = f"stream error: {json.dumps(chunk['error'])[:200]}"
                        return
                    text = chunk_text(chunk)
                    if text:
                        arrivals.append(time.perf_counter())
                        parts.append(text)
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    if isinstance(chunk.get("timings"), dict):
                        timings = chunk["timings"]
        end = time.perf_counter()
        if not arrivals:
            res.error = "stream ended without any content"
            return
        res.ttft_s = arrivals[0] - start
        res.e2e_s = end - start
        res.itl_s = [b - a for a, b in pairwise(arrivals)]
        res.text = "".join(parts)
        res.completion_tokens = int((usage or {}).get("completion_tokens") or len(arrivals))
        res.prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
        res.cached_tokens = _cached_tokens(usage, timings)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def fetch_model(session: aiohttp.ClientSession, url: str, api_key: str | None) -> str:
    async with session.get(f"{url.rstrip('/')}/models", headers=auth_headers(api_key)) as resp:
        resp.raise_for_status()
        data = await resp.json()
    models = data.get("data") or []
    if not models:
        raise RuntimeError(f"{url}/models lists no models")
    return str(models[0]["id"])


def _new_session(timeout: float, cafile: str | None = None) -> aiohttp.ClientSession:
    # limit=0: the connector must never be what caps concurrency. The overall
    # per-request deadline is enforced with asyncio.timeout in Client._stream.
    # force_close: one connection per request. llama-server closes a connection after a
    # stream without saying so, and the next request on it failed ("Can not write request
    # body"); a loopback connect costs far less than a millisecond, for every server alike.
    # With force_close an https run pays a full TLS handshake per request: the worst case.
    tls = ssl.create_default_context(cafile=cafile) if cafile else True
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=tls),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
    )


async def _run_stream(client: Client, cfg: LoadConfig, n_requests: int) -> list[RequestResult]:
    system = _system_messages(cfg)
    results: list[RequestResult] = []
    indices = iter(range(n_requests))

    async def worker() -> None:
        # All workers share one iterator: whichever client is free takes the next request.
        for i in indices:
            user = {"role": "user", "content": make_user_prompt(cfg.prompt_tokens, _seed(cfg, i))}
            results.append(await client.send([*system, user]))

    await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
    return results


async def _run_conversation(client: Client, cfg: LoadConfig, conv: int) -> list[RequestResult]:
    history = _system_messages(cfg)
    results: list[RequestResult] = []
    for turn in range(1, cfg.turns + 1):
        seed = _seed(cfg, f"conv-{conv}-turn-{turn}")
        user = {"role": "user", "content": make_user_prompt(cfg.prompt_tokens, seed)}
        res = await client.send([*history, user])
        res.turn = turn
        results.append(res)
        # A failed turn is dropped from the history: two user messages in a row
        # would trip strict chat templates and turn one failure into many.
        if res.ok:
            history += [user, {"role": "assistant", "content": res.text}]
    return results


def _system_messages(cfg: LoadConfig) -> list[Message]:
    if cfg.system_prompt_tokens <= 0:
        return []
    # Deliberately unsalted: the system prompt is the shared prefix under test.
    text = "You are a helpful assistant. " + make_text(cfg.system_prompt_tokens, "system")
    return [{"role": "system", "content": text}]


def _seed(cfg: LoadConfig, key: object) -> str:
    return f"{cfg.seed_salt}/{key}"


async def run_load(cfg: LoadConfig) -> RunResult:
    """Run warmup then one measured phase; failed requests are recorded, not raised."""
    if cfg.mode not in ("stream", "multiturn") or cfg.endpoint not in ("chat", "completions"):
        raise ValueError(f"bad mode/endpoint: {cfg.mode}/{cfg.endpoint}")
    async with _new_session(cfg.timeout, cfg.cafile) as session:
        model = cfg.model or await fetch_model(session, cfg.url, cfg.api_key)
        client = Client(session, cfg, model)
        for k in range(cfg.warmup):
            user = {"role": "user", "content": make_user_prompt(cfg.prompt_tokens, f"warmup-{k}")}
            await client.send([*_system_messages(cfg), user])

        start = time.perf_counter()
        if cfg.mode == "stream":
            planned = cfg.requests if cfg.requests is not None else cfg.concurrency * 2
            results = await _run_stream(client, cfg, planned)
        else:
            planned = cfg.concurrency * cfg.turns
            per_conv = await asyncio.gather(
                *(_run_conversation(client, cfg, c) for c in range(cfg.concurrency))
            )
            results = [r for conv in per_conv for r in conv]
        duration = time.perf_counter() - start
    return summarize(cfg, model, planned, results, duration)


def summarize(
    cfg: LoadConfig, model: str, planned: int, results: list[RequestResult], duration: float
) -> RunResult:
    ok = [r for r in results if r.ok]
    status_codes: dict[str, int] = {}
    for r in results:
        if r.status is not None and r.status != 200:
            status_codes[str(r.status)] = status_codes.get(str(r.status), 0) + 1
    refusals = sum(1 for r in results if r.refused)
    tpots = [
        (r.e2e_s - r.ttft_s) / (r.completion_tokens - 1)
        for r in ok
        if r.e2e_s is not None and r.ttft_s is not None and r.completion_tokens > 1
    ]
    output_tokens = sum(r.completion_tokens for r in ok)
    run = RunResult(
        label=cfg.label,
        url=cfg.url,
        model=model,
        mode=cfg.mode,
        endpoint=cfg.endpoint,
        concurrency=cfg.concurrency,
        requests=planned,
        ok=len(ok),
        refusals=refusals,
        errors=len(results) - len(ok) - refusals,
        status_codes=status_codes,
        error_samples=[r.error for r in results if r.error][:MAX_ERROR_SAMPLES],
        duration_s=duration,
        ttft_ms=LatencyStats.from_seconds([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=LatencyStats.from_seconds(tpots),
        itl_ms=LatencyStats.from_seconds([gap for r in ok for gap in r.itl_s]),
        e2e_ms=LatencyStats.from_seconds([r.e2e_s for r in ok if r.e2e_s is not None]),
        output_tokens=output_tokens,
        output_tokens_per_s=output_tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_prompt_tokens=sum(r.cached_tokens for r in ok),
    )
    if cfg.mode == "multiturn":
        first = [r.ttft_s * 1000.0 for r in ok if r.turn == 1 and r.ttft_s is not None]
        later = [r.ttft_s * 1000.0 for r in ok if r.turn > 1 and r.ttft_s is not None]
        run.ttft_first_turn_p50_ms = percentile(first, 50)
        run.ttft_later_turns_p50_ms = percentile(later, 50)
    return run


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadgen", description="Streaming load generator for OpenAI-compatible servers."
    )
    p.add_argument("--url", default="http://127.0.0.1:8000/v1", help="base URL including /v1")
    p.add_argument("--model", help="model id (default: first id from GET {url}/models)")
    p.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--cafile", help="certificate to trust for an https URL (self-signed)")
    p.add_argument("--mode", choices=("stream", "multiturn"), default="stream")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--concurrency", type=_int_list, default=[1], help="N or sweep 1,2,4,8")
    p.add_argument("--requests", type=int, help="requests per run (default: concurrency x 2)")
    p.add_argument("--prompt-tokens", type=int, default=150, help="approx. user prompt length")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--system-prompt-tokens", type=int, default=0, help="shared system prompt")
    p.add_argument("--ignore-eos", action="store_true", help="always generate max-tokens")
    p.add_argument("--conversations", type=_int_list, default=[4], help="multiturn: C or sweep")
    p.add_argument("--turns", type=int, default=4, help="turns per conversation (multiturn)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests before each run")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request seconds")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the markdown table")
    p.add_argument("--label", default="", help="contender name stored in the results")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> list[RunResult]:
    model: str = args.model
    if not model:
        async with _new_session(args.timeout, args.cafile) as session:
            model = await fetch_model(session, args.url, args.api_key)
    sweep: list[int] = args.conversations if args.mode == "multiturn" else args.concurrency
    # Options whose argparse dest matches a LoadConfig field carry over as they are.
    shared = {f.name for f in fields(LoadConfig)} - {
        "model",
        "concurrency",
        "seed_salt",
        "extra_body",
    }
    common = {k: v for k, v in vars(args).items() if k in shared}
    runs: list[RunResult] = []
    for n in sweep:
        cfg = LoadConfig(**common, model=model, concurrency=n, seed_salt=f"run-{n}")
        print(f"[{args.label or model}] {args.mode} concurrency={n} ...", file=sys.stderr)
        run = await run_load(cfg)
        print(
            f"  {run.ok} ok, {run.refusals} refused, {run.errors} errors in "
            f"{run.duration_s:.2f}s, {run.output_tokens_per_s:.1f} out tok/s",
            file=sys.stderr,
        )
        for sample in run.error_samples:
            print(f"  error: {sample}", file=sys.stderr)
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        runs = asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130
    except (aiohttp.ClientError, OSError, RuntimeError, ValueError) as exc:
        print(f"loadgen: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(runs)
    print(table, end="")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table)
    if args.json:
        doc = {
            "tool": "llmd-loadgen",
            "started": started,
            # Never persist the secret itself, only whether one was used.
            "args": {**vars(args), "api_key": "***" if args.api_key else None},
            "runs": [asdict(r) for r in runs],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0 if any(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
