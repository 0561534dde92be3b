"""The core benchmark: llmd against the baselines its targets name, in one run.

Contenders, all on the same model file, thread counts and OpenMP policy:
- raw: llama.cpp decode through llama-cpp-python's low-level API in this process, no HTTP
  (single sequence, greedy, tg128), and llmd's own scheduler in-process (no HTTP, no IPC);
- llmd: the real daemon, driven by bench/loadgen.py over HTTP;
- llama-cpp-python's bundled server (one request at a time), when a venv with it is given.

Workloads: one stream; 16 concurrent streams (~150-token prompts, 128 output tokens);
multi-turn chat (4 conversations x 4 turns over a ~500-token system prompt); memory.
Each measurement is repeated and the median kept; results go to a JSON file and a markdown
summary. Machines are noisy: compare ratios within one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.loadgen import LoadConfig, RunResult, run_load

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in time")


def _rss_tree(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))


def raw_decode(model: Path, threads: int, threads_batch: int, tokens: int) -> dict[str, float]:
    """tg-style decode of one sequence, and the same through llmd's scheduler, in-process."""
    code = f"""
import json, time
from pathlib import Path
from llmd.engine.llama import LlamaBackend, LoadOptions
from llmd.engine.messages import Delta, GenerateRequest, SamplingParams
from llmd.engine.scheduler import Scheduler
b = LlamaBackend(LoadOptions(Path({str(model)!r}), 2048, 1, 256, 256, {threads}, {threads_batch},
                 "auto", "f16"))
out = {{}}
prompt = b.tokenize("Once upon a time", True)
b.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
sampler = b.new_sampler(SamplingParams(temperature=0), 0)
pos, idx = len(prompt), len(prompt) - 1
start = time.perf_counter()
for _ in range({tokens}):
    tok = b.sample(sampler, idx)
    b.decode([(tok, pos, 0, True)])
    pos, idx = pos + 1, 0
out["raw_tok_s"] = {tokens} / (time.perf_counter() - start)
b.seq_rm(0, -1, -1)
s = Scheduler(b, 2048, b.adds_bos(), b.bos)
s.submit(GenerateRequest("x", "Once upon a time", SamplingParams(temperature=0),
                         max_tokens={tokens} + 1, ignore_eos=True))
s.step()  # prompt and first token, as the raw loop's untimed part
n, start = 0, time.perf_counter()
while s.has_work():
    n += sum(e.tokens for e in s.step() if isinstance(e, Delta))
out["scheduler_tok_s"] = n / (time.perf_counter() - start)
print(json.dumps(out))
"""
    env = _omp_env()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _omp_env() -> dict[str, str]:
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


class Server:
    """A contender's server process, started on a free port and stopped on exit."""

    def __init__(self, argv: list[str], port: int, ready_path: str, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=_omp_env(), cwd=ROOT
            )
        _wait_http(f"http://127.0.0.1:{port}{ready_path}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def rss(self) -> int:
        return _rss_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_llmd(
    model: Path, args: argparse.Namespace, workdir: Path, with_model: bool = True
) -> Server:
    port = _free_port()
    config = workdir / "llmd.toml"
    lines = [
        "[server]",
        "max_queue = 256",
        "[engine]",
        f"ctx_per_seq = {args.ctx}",
        f"parallel = {args.parallel}",
        f"threads = {args.threads}",
        f"threads_batch = {args.threads_batch}",
    ]
    if with_model:
        lines += ["[models.bench]", f'path = "{model.resolve()}"']
    config.write_text("\n".join(lines) + "\n")
    argv = [str(ROOT / ".venv/bin/llmd"), "serve", "--config", str(config), "--port", str(port)]
    return Server(argv, port, "/ready" if with_model else "/health", workdir / "llmd.log")


def start_llama_cpp_python(model: Path, args: argparse.Namespace, workdir: Path) -> Server:
    port = _free_port()
    python = Path(args.lcp_venv) / "bin/python"
    argv = [
        str(python), "-m", "llama_cpp.server", "--model", str(model.resolve()),
        "--port", str(port), "--n_ctx", str(args.ctx), "--n_threads", str(args.threads),
        "--n_threads_batch", str(args.threads_batch), "--interrupt_requests", "False",
        "--model_alias", "bench",
    ]  # fmt: skip
    return Server(argv, port, "/v1/models", workdir / "llama-cpp-python.log")


async def _load(url: str, label: str, **kw: Any) -> RunResult:
    kw = dict(kw)
    conversations = kw.pop("conversations", None)
    if kw.get("mode") == "multiturn":
        kw["concurrency"] = conversations
    return await run_load(LoadConfig(url=url, model="bench", label=label, **kw))


def measure(url: str, label: str, repeats: int, **kw: Any) -> dict[str, Any]:
    """Run one workload `repeats` times after a warm-up; keep every run and the medians."""
    warmup = {**kw, "requests": 1, "concurrency": 1, "mode": "stream", "seed_salt": "warmup"}
    asyncio.run(_load(url, label, **warmup))
    # Fresh prompts for every repeat (the same ones for every contender): a repeat must not
    # find the previous repeat's prompts in the prefix cache.
    runs = [
        asdict(asyncio.run(_load(url, label, **kw, seed_salt=f"repeat-{i}")))
        for i in range(repeats)
    ]
    keys = ["output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50", "itl_ms.p99"]
    summary: dict[str, Any] = {k: statistics.median(_get(r, k) for r in runs) for k in keys}
    summary["spread_output_tokens_per_s"] = [
        min(r["output_tokens_per_s"] for r in runs),
        max(r["output_tokens_per_s"] for r in runs),
    ]
    summary["errors"] = sum(r["errors"] for r in runs)
    summary["refusals"] = sum(r["refusals"] for r in runs)
    summary["cached_prompt_tokens"] = statistics.median(r["cached_prompt_tokens"] for r in runs)
    if runs[0]["ttft_later_turns_p50_ms"] is not None:
        for key in ("ttft_first_turn_p50_ms", "ttft_later_turns_p50_ms"):
            summary[key] = statistics.median(r[key] for r in runs)
    return {"label": label, "summary": summary, "runs": runs}


def _get(run: dict[str, Any], dotted: str) -> float:
    node: Any = run
    for part in dotted.split("."):
        node = node[part]
    return float(node)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", type=Path, default=ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--threads", type=int, default=1, help="decode threads, every contender")
    p.add_argument("--threads-batch", type=int, default=2, help="prompt threads, every contender")
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lcp-venv", help="venv with llama-cpp-python[server] (skipped if absent)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = p.parse_args(argv)

    results: dict[str, Any] = {
        "tool": "llmd-bench-core",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": str(args.model.name),
        "settings": {
            "threads": args.threads,
            "threads_batch": args.threads_batch,
            "omp_wait_policy": _omp_env()["OMP_WAIT_POLICY"],
            "ctx_per_seq": args.ctx,
            "parallel": args.parallel,
        },
    }
    print("raw decode (in-process, no HTTP) ...", file=sys.stderr)
    raws = [raw_decode(args.model, args.threads, args.threads_batch, 128) for _ in range(3)]
    results["raw"] = {
        "raw_tok_s": statistics.median(r["raw_tok_s"] for r in raws),
        "scheduler_tok_s": statistics.median(r["scheduler_tok_s"] for r in raws),
        "runs": raws,
    }
    one = dict(prompt_tokens=150, max_tokens=128, ignore_eos=True)
    workloads: dict[str, dict[str, Any]] = {
        "one_stream": {**one, "concurrency": 1, "requests": 4},
        "concurrent_16": {**one, "concurrency": 16, "requests": 32},
        "multiturn": {
            "mode": "multiturn",
            "conversations": 4,
            "turns": 4,
            "system_prompt_tokens": 500,
            "prompt_tokens": 40,
            "max_tokens": 64,
            "ignore_eos": True,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        idle = start_llmd(args.model, args, work, with_model=False)
        time.sleep(2)
        results["llmd_idle_rss_bytes"] = idle.rss()
        idle.stop()
        contenders: list[tuple[str, Any]] = [("llmd", start_llmd)]
        if args.lcp_venv and Path(args.lcp_venv, "bin/python").exists():
            contenders.append(("llama-cpp-python", start_llama_cpp_python))
        for label, start in contenders:
            server = start(args.model, args, work)
            try:
                for name, kw in workloads.items():
                    if label != "llmd" and name == "multiturn":
                        continue
                    print(f"{label}: {name} ...", file=sys.stderr)
                    results.setdefault(name, {})[label] = measure(
                        server.url, label, args.repeats, **kw
                    )
                results.setdefault("rss_bytes_loaded", {})[label] = server.rss()
            finally:
                server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    path = args.out / f"{stamp}-core-{platform.node() or 'machine'}.json"
    path.write_text(json.dumps(results, indent=2))
    print(summary_markdown(results))
    print(f"results: {path}", file=sys.stderr)
    return 0


def summary_markdown(r: dict[str, Any]) -> str:
    raw = r["raw"]["raw_tok_s"]
    one = r["one_stream"]["llmd"]["summary"]
    c16 = r["concurrent_16"]["llmd"]["summary"]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| raw decode, in-process (tok/s) | {raw:.1f} |",
        f"| llmd scheduler, in-process (tok/s) | {r['raw']['scheduler_tok_s']:.1f} |",
        f"| llmd one stream over HTTP, decode (1000/TPOT p50, tok/s) | "
        f"{1000 / one['tpot_ms.p50']:.1f} ({1000 / one['tpot_ms.p50'] / raw:.2f}x raw) |",
        f"| llmd one stream, aggregate output tok/s | {one['output_tokens_per_s']:.1f} |",
        f"| llmd 16 streams, aggregate output tok/s | {c16['output_tokens_per_s']:.1f} "
        f"({c16['output_tokens_per_s'] / one['output_tokens_per_s']:.2f}x one stream) |",
        f"| llmd 16 streams, TTFT p50 / p99 (ms) | {c16['ttft_ms.p50']:.0f} / "
        f"{c16['ttft_ms.p99']:.0f} |",
    ]
    lcp = r["concurrent_16"].get("llama-cpp-python")
    if lcp:
        s = lcp["summary"]
        lines.append(
            f"| llama-cpp-python server 16 streams, output tok/s | {s['output_tokens_per_s']:.1f} "
            f"(llmd {c16['output_tokens_per_s'] / s['output_tokens_per_s']:.2f}x) |"
        )
        lines.append(
            f"| llama-cpp-python server one stream, output tok/s | "
            f"{r['one_stream']['llama-cpp-python']['summary']['output_tokens_per_s']:.1f} |"
        )
    mt = r["multiturn"]["llmd"]["summary"]
    lines += [
        f"| multi-turn TTFT p50, later turns (ms) | {mt['ttft_later_turns_p50_ms']:.0f} |",
        f"| multi-turn TTFT p50, first turns (ms) | {mt['ttft_first_turn_p50_ms']:.0f} |",
        f"| idle daemon RSS, no model (MB) | {r['llmd_idle_rss_bytes'] / 1e6:.0f} |",
        f"| daemon + model process RSS, loaded (MB) | {r['rss_bytes_loaded']['llmd'] / 1e6:.0f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
