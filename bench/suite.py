"""Side-by-side benchmark: llmd against the servers a user would pick instead (issue 3).

Contenders, taking turns level by level, each alone on the machine, all on the same model file,
thread counts and OpenMP policy:
- llmd: the real daemon over HTTP (continuous batching, prefix reuse);
- llama-server: llama.cpp's own server, `-np PARALLEL`, built from the llama.cpp sources inside
  the llama-cpp-python sdist that llmd uses (scripts/bench builds it);
- llama-cpp-python: its bundled server (`python -m llama_cpp.server`), which serves one request
  at a time, in its own virtualenv;
- serial (optional): llama-server with one slot, i.e. plain one-request-at-a-time serving on
  llama.cpp's own loop.

Workloads: raw engine speed (llama-bench pp512/tg128; llmd's engine in-process, no HTTP), a
concurrency sweep (~150-token prompts, 128 output tokens; level 1 is the one-stream workload),
16 clients sharing one 1,000-token system prompt, multi-turn chat, and an overload run.
Each workload is warmed up and repeated; medians and the spread of the repeats are reported,
and every run is kept in the JSON. Machines are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil

from bench.daemon import free_port
from bench.loadgen import LoadConfig, RunResult, run_load

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "smollm2": ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": ROOT / "models/gemma-3-270m-q4_k_m.gguf",
}
CONTENDERS = ("llmd", "llama-server", "llama-cpp-python", "serial")
DEFAULT_CONTENDERS = ("llmd", "llama-server", "llama-cpp-python")
# Contenders that serve one request at a time: their throughput is flat by construction and
# their TTFT grows linearly with the queue, so the sweep runs them at fewer levels.
SERIAL = frozenset({"llama-cpp-python", "serial"})
WORKLOADS = ("sweep", "shared_prefix", "multiturn", "overload")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Workload:
    """One workload: loadgen settings per level, which contenders run it, and how often."""

    name: str
    title: str
    levels: list[int]
    params: dict[str, Any]
    contenders: tuple[str, ...] = CONTENDERS
    serial_levels: list[int] | None = None
    requests: Callable[[int], int] = field(default=lambda c: max(c, 2))
    once: bool = False
    """Measured once, whatever --repeats says: it checks behaviour (refusals), not speed."""

    def repeats(self, default: int) -> int:
        return 1 if self.once else default

    def levels_for(self, contender: str) -> list[int]:
        if contender in SERIAL and self.serial_levels is not None:
            return [c for c in self.levels if c in self.serial_levels]
        return self.levels


def plan(args: argparse.Namespace) -> list[Workload]:
    quick = args.quick
    out = 32 if quick else 128
    stream = {"prompt_tokens": 150, "max_tokens": out, "ignore_eos": True}
    capacity = args.parallel + args.max_queue
    every = [
        Workload(
            "sweep",
            "Concurrency sweep (~150-token prompts, 128 output tokens; level 1 = one stream)",
            args.levels,
            stream,
            serial_levels=[c for c in args.levels if c in (1, 16)] or args.levels[:1],
        ),
        Workload(
            "shared_prefix",
            f"{4 if quick else 16} clients sharing one 1,000-token system prompt",
            [4 if quick else 16],
            {
                "prompt_tokens": 50,
                "max_tokens": 16 if quick else 32,
                "system_prompt_tokens": 1000,
                "ignore_eos": True,
            },
            requests=lambda c: c,
        ),
        Workload(
            "multiturn",
            f"Multi-turn chat ({2 if quick else 4} conversations x {3 if quick else 4} turns "
            "over a ~300-token system prompt)",
            [2 if quick else 4],
            {
                "mode": "multiturn",
                "turns": 3 if quick else 4,
                "system_prompt_tokens": 300,
                "prompt_tokens": 40,
                "max_tokens": 16 if quick else 64,
                "ignore_eos": True,
            },
        ),
        Workload(
            "overload",
            f"Overload ({2 * capacity} clients at once; llmd holds {args.parallel} running + "
            f"{args.max_queue} queued)",
            [2 * capacity],
            {"prompt_tokens": 50, "max_tokens": 8 if quick else 16, "ignore_eos": True},
            # llama-cpp-python has no queue limit and serves one at a time: it would only
            # show a very long wait. llama-server shows what "no limit" does to latency.
            contenders=("llmd", "llama-server"),
            requests=lambda c: c,
            once=True,
        ),
    ]
    return [wl for wl in every if wl.name in args.workloads]


def estimate_seconds(
    workloads: list[Workload], contenders: list[str], repeats: int, tg: float, pp: float
) -> float:
    """A rough wall-clock estimate of the HTTP workloads from decode and prompt speeds."""
    total = 0.0
    for wl in workloads:
        for c in contenders:
            if c not in wl.contenders:
                continue
            for level in wl.levels_for(c):
                n = wl.requests(level)
                turns = wl.params.get("turns", 1)
                if wl.params.get("mode") == "multiturn":
                    n = level * turns
                out = n * wl.params["max_tokens"]
                prompt = n * (wl.params["prompt_tokens"] + 30)
                # Measured on 2 cores: one stream ~0.9x tg128 through HTTP, 16 batched streams
                # 0.7-0.85x (prompts read meanwhile), one-at-a-time servers ~0.6x.
                speed = tg * (0.6 if c in SERIAL else 0.9 if level == 1 else 0.8)
                warmup = wl.params["max_tokens"] / tg + wl.params["prompt_tokens"] / pp
                total += (out / speed + prompt / pp + 1) * wl.repeats(repeats) + warmup
                total += 3  # a server started for this level alone (measured: 2-3 s)
    return total + 15 * len(contenders)


# -- processes -----------------------------------------------------------------------------


def _omp_env() -> dict[str, str]:
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def _rss_tree(proc: psutil.Process) -> int:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class MemoryWatch:
    """Samples the RSS of a process tree in a thread; `peak()` since the last `reset()`."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_tree(self.proc))

    def now(self) -> int:
        return _rss_tree(self.proc)

    def reset(self) -> None:
        self._peak = self.now()

    def peak(self) -> int:
        return max(self._peak, self.now())

    def stop(self) -> None:
        self._stop.set()


class Server:
    """A contender's server, started on a free port, watched for memory, stopped on exit."""

    def __init__(self, label: str, argv: list[str], port: int, ready: str, log_path: Path) -> None:
        self.label = label
        self.model = "bench"  # every contender serves the model under this name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=_omp_env(), cwd=ROOT
            )
        self._wait(f"http://127.0.0.1:{port}{ready}")
        self.memory = MemoryWatch(self.proc.pid)

    def _wait(self, url: str, seconds: float = 300) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.label}: {url} did not answer in {seconds:.0f}s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if hasattr(self, "memory"):
            self.memory.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Setup:
    """What every contender is started with (same model, threads, OpenMP policy)."""

    model: Path
    threads: int
    threads_batch: int
    ctx: int
    parallel: int
    max_queue: int
    work: Path
    llama_server: Path | None
    lcp_python: Path | None


def _empty_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def start(label: str, s: Setup) -> Server:
    port = free_port()
    model = str(s.model.resolve())
    if label == "llmd":
        config = s.work / "llmd.toml"
        config.write_text(
            "\n".join(
                [
                    # An empty directory of its own: the one model is the table below.
                    f'models_dir = "{_empty_dir(s.work / "models")}"',
                    "[server]",
                    f"max_queue = {s.max_queue}",
                    "[engine]",
                    f"ctx_per_seq = {s.ctx}",
                    f"parallel = {s.parallel}",
                    f"threads = {s.threads}",
                    f"threads_batch = {s.threads_batch}",
                    "[models.bench]",
                    f'path = "{model}"',
                ]
            )
            + "\n"
        )
        argv = [str(ROOT / ".venv/bin/llmd"), "serve", "--config", str(config)]
        argv += ["--port", str(port)]
        return Server(label, argv, port, "/ready", s.work / "llmd.log")
    if label in ("llama-server", "serial"):
        if s.llama_server is None:
            raise RuntimeError("llama-server was not built (scripts/bench builds it)")
        slots = s.parallel if label == "llama-server" else 1
        argv = [
            str(s.llama_server), "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-t", str(s.threads), "-tb", str(s.threads_batch), "-np", str(slots),
            "-c", str(s.ctx * slots), "-a", "bench", "--no-webui",
        ]  # fmt: skip
        return Server(label, argv, port, "/health", s.work / f"{label}.log")
    if label == "llama-cpp-python":
        if s.lcp_python is None:
            raise RuntimeError("no llama-cpp-python[server] venv (scripts/bench makes it)")
        argv = [
            str(s.lcp_python), "-m", "llama_cpp.server", "--model", model,
            "--port", str(port), "--n_ctx", str(s.ctx), "--n_threads", str(s.threads),
            "--n_threads_batch", str(s.threads_batch), "--model_alias", "bench",
            # Left at its default (True), a new request interrupts the running stream: the
            # concurrent clients are then cut off after a token or two.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        return Server(label, argv, port, "/v1/models", s.work / f"{label}.log")
    raise ValueError(f"unknown contender {label}")


# -- raw engine speed ------------------------------------------------------------------------


def llama_bench(binary: Path, model: Path, threads: list[int], repeats: int) -> dict[str, Any]:
    """llama-bench pp512 and tg128 at each thread count; median and spread of its samples."""
    argv = [str(binary), "-m", str(model), "-p", "512", "-n", "128", "-o", "json"]
    argv += ["-t", ",".join(str(t) for t in sorted(set(threads))), "-r", str(repeats)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_omp_env(), check=True)
    rows = json.loads(done.stdout)
    out: dict[str, Any] = {"argv": argv, "results": {}}
    for row in rows:
        test = "pp512" if row["n_prompt"] else "tg128"
        samples = [float(x) for x in row["samples_ts"]]
        out["results"][f"{test}_t{row['n_threads']}"] = {
            "median": statistics.median(samples),
            "spread": [min(samples), max(samples)],
            "samples": samples,
        }
        out["build"] = f"{row.get('build_number')} ({row.get('build_commit')})"
    return out


_ENGINE_CODE = """
import json, sys, time
from pathlib import Path
from llmd.engine.llama import LlamaBackend, LoadOptions
from llmd.engine.messages import Delta, GenerateRequest
from llmd.engine.scheduler import Scheduler
from llmd.sampling import resolve
from bench.loadgen import make_user_prompt
model, threads, threads_batch, parallel, streams, tokens = sys.argv[1:7]
threads, threads_batch, parallel, streams, tokens = map(
    int, (threads, threads_batch, parallel, streams, tokens))
b = LlamaBackend(LoadOptions(Path(model), 2048, parallel, 256, 256, threads, threads_batch,
                 "auto", "f16"))
out = {"eog": [t for t in range(b.n_vocab) if b.is_eog(t)],
       "chat_template": "tokenizer.chat_template" in b.metadata()}
prompt = b.tokenize("Once upon a time", True)
b.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
sampler = b.new_sampler(resolve(temperature=0), 0)
pos, idx = len(prompt), len(prompt) - 1
start = time.perf_counter()
for _ in range(tokens):
    tok = b.sample(sampler, idx)
    b.decode([(tok, pos, 0, True)])
    pos, idx = pos + 1, 0
out["raw_decode_tok_s"] = tokens / (time.perf_counter() - start)
b.seq_rm(0, -1, -1)

def run(n, salt):
    s = Scheduler(b, 2048, b.adds_bos(), b.bos)
    for i in range(n):
        text = make_user_prompt(150, f"{salt}/{i}") if n > 1 else "Once upon a time"
        s.submit(GenerateRequest(f"r{i}", text, resolve(temperature=0, max_tokens=tokens + 1),
                                 ignore_eos=True))
    if n == 1:
        s.step()  # prompt and first token, like the raw loop's untimed part
    produced, steps, start = 0, 0, time.perf_counter()
    while s.has_work():
        produced += sum(e.tokens for e in s.step() if isinstance(e, Delta))
        steps += 1
    for slot in s.slots:
        b.seq_rm(slot.id, -1, -1)
    return produced / (time.perf_counter() - start)

out["scheduler_one_tok_s"] = run(1, "one")
if streams > 1:
    out[f"scheduler_{streams}_tok_s"] = run(streams, "many")
print(json.dumps(out))
"""


def llmd_engine(s: Setup, streams: int, tokens: int) -> dict[str, Any]:
    """llmd's backend and scheduler in one process: no HTTP, no IPC (and the model's EOG ids)."""
    argv = [str(ROOT / ".venv/bin/python"), "-c", _ENGINE_CODE, str(s.model), str(s.threads)]
    argv += [str(s.threads_batch), str(max(s.parallel, streams)), str(streams), str(tokens)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_omp_env(), cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"llmd engine run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- HTTP workloads --------------------------------------------------------------------------

SUMMARY_KEYS = [
    f"{metric}.{p}"
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
    for p in ("p50", "p90", "p99")
] + ["output_tokens_per_s", "requests_per_s", "cached_prompt_tokens", "prompt_tokens"]


def _get(run: dict[str, Any], dotted: str) -> float | None:
    node: Any = run
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None else float(node)


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every metric over the repeats, and the spread (min, max) of each."""
    summary: dict[str, Any] = {}
    for key in [*SUMMARY_KEYS, "ttft_first_turn_p50_ms", "ttft_later_turns_p50_ms"]:
        values = [v for r in runs if (v := _get(r, key)) is not None]
        if values:
            summary[key] = statistics.median(values)
            summary[f"{key}.spread"] = [min(values), max(values)]
    for key in ("errors", "refusals", "ok", "requests"):
        summary[key] = sum(int(r[key]) for r in runs)
    summary["error_samples"] = [e for r in runs for e in r["error_samples"]][:5]
    return summary


class Endpoint(Protocol):
    """What a workload runs against: a started `Server`, or a test's daemon."""

    label: str
    model: str
    memory: MemoryWatch

    @property
    def url(self) -> str: ...


def measure(
    server: Endpoint, wl: Workload, level: int, repeats: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Warm up, then run one workload level `repeats` times with fresh prompts each time."""
    kw = dict(wl.params)
    kw["concurrency"] = level
    kw["requests"] = wl.requests(level)
    kw["extra_body"] = extra
    base = LoadConfig(url=server.url, model=server.model, label=server.label, warmup=0)
    cfg = {**asdict(base), **kw}
    warm = {**cfg, "mode": "stream", "concurrency": 1, "requests": 1, "seed_salt": "warmup"}
    asyncio.run(run_load(LoadConfig(**warm)))
    server.memory.reset()
    runs: list[dict[str, Any]] = []
    for i in range(repeats):
        # Fresh prompts per level and repeat (the same ones for every contender): a run must
        # not find an earlier run's prompts in a prefix cache (with the level left out, the
        # 16-client level re-sent the 4-client level's prompts, and a server that kept them
        # read 4 of 16 prompts for free). The system prompt stays shared.
        salt = f"c{level}/r{i}"
        result: RunResult = asyncio.run(run_load(LoadConfig(**{**cfg, "seed_salt": salt})))
        runs.append(asdict(result))
    return {
        "level": level,
        "summary": summarize_runs(runs),
        "peak_rss_bytes": server.memory.peak(),
        "runs": runs,
    }


# -- one model, every contender -----------------------------------------------------------


def bench_model(
    args: argparse.Namespace, model: Path, save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Every contender on one model; `save` gets the partial result after each measurement,
    so an interrupted run keeps what it measured."""
    workloads = plan(args)
    contenders = list(args.contenders)
    repeats = args.repeats
    with tempfile.TemporaryDirectory(prefix="llmd-bench-") as tmp:
        s = Setup(
            model=model,
            threads=args.threads,
            threads_batch=args.threads_batch,
            ctx=args.ctx,
            parallel=args.parallel,
            max_queue=args.max_queue,
            work=Path(tmp),
            llama_server=_binary(args.llama_cpp_bin, "llama-server"),
            lcp_python=_lcp_python(args.lcp_venv),
        )
        out: dict[str, Any] = {
            "model": {"path": str(model), "name": model.name, "bytes": model.stat().st_size},
            "raw": {},
            "workloads": {},
            "servers": {},
        }
        started = time.monotonic()
        bench_bin = _binary(args.llama_cpp_bin, "llama-bench")
        tg, pp = 80.0 * 98e6 / model.stat().st_size, 270.0
        if bench_bin is not None:
            log(f"{model.name}: llama-bench pp512/tg128 ...")
            lb = llama_bench(bench_bin, model, [s.threads, s.threads_batch], max(repeats, 3))
            out["raw"]["llama_bench"] = lb
            tg = lb["results"][f"tg128_t{s.threads}"]["median"]
            pp = lb["results"][f"pp512_t{s.threads_batch}"]["median"]
        log(f"{model.name}: llmd engine in-process (no HTTP) ...")
        engines = [
            llmd_engine(s, 16 if i == 0 else 1, 32 if args.quick else 128)
            for i in range(1 if args.quick else 3)
        ]
        eog = engines[0]["eog"]
        has_template = engines[0]["chat_template"]
        for e in engines:
            e.pop("eog")
            e.pop("chat_template")
        # A model without a chat template in its GGUF (Gemma-3-270M base) would get each
        # server's own fallback template, i.e. different prompts: use the completions
        # endpoint, where every contender reads the same text.
        endpoint = args.endpoint or ("chat" if has_template else "completions")
        out["endpoint"] = endpoint
        for wl in workloads:
            wl.params["endpoint"] = endpoint
        out["raw"]["llmd_engine"] = {
            key: {
                "median": statistics.median(e[key] for e in engines if key in e),
                "runs": [e[key] for e in engines if key in e],
            }
            for key in engines[0]
        }
        eta = estimate_seconds(workloads, contenders, repeats, tg, pp)
        log(f"{model.name}: HTTP workloads, estimated {eta / 60:.0f} min")
        # llama-cpp-python's server has no ignore_eos: a bias against end-of-generation tokens
        # keeps its outputs as long as the others'.
        lcp_extra = {"logit_bias": {str(t): -100.0 for t in eog}}
        for wl in workloads:
            entry = out["workloads"].setdefault(
                wl.name, {"title": wl.title, "params": wl.params, "results": {}}
            )
            runs = [label for label in contenders if label in wl.contenders]
            levels = sorted({level for label in runs for level in wl.levels_for(label)})
            for k, level in enumerate(levels):
                # Contenders take turns level by level, each on a server started for it alone,
                # and the one to go first rotates: a machine that slows down during the run
                # slows every contender alike. (Run one after another, a host slowing down
                # while llmd ran once cost it 17% at low concurrency, docs/benchmarks.md.)
                for label in runs[k % len(runs) :] + runs[: k % len(runs)]:
                    if level not in wl.levels_for(label):
                        continue
                    extra = lcp_extra if label == "llama-cpp-python" else {}
                    spent = (time.monotonic() - started) / 60
                    log(f"{model.name}: {label} {wl.name} c={level} x{repeats} ({spent:.1f} min)")
                    server = start(label, s)
                    out["servers"].setdefault(
                        label, {"argv": server.argv, "idle_rss_bytes": server.memory.now()}
                    )
                    try:
                        result = measure(server, wl, level, wl.repeats(repeats), extra)
                    finally:
                        server.stop()
                    entry["results"].setdefault(label, []).append(result)
                    save(out)
                    s_ = result["summary"]
                    log(
                        f"  {s_.get('output_tokens_per_s', 0):.1f} out tok/s, TTFT p50 "
                        f"{s_.get('ttft_ms.p50', 0):.0f} ms, {s_['errors']} errors, "
                        f"{s_['refusals']} refused"
                    )
        for label, server_out in out["servers"].items():
            server_out["peak_rss_bytes"] = max(
                r["peak_rss_bytes"]
                for wl_out in out["workloads"].values()
                for r in wl_out["results"].get(label, [])
            )
        out["elapsed_s"] = time.monotonic() - started
        out["estimated_s"] = eta
    out["ratios"] = ratios(out)
    return out


def _binary(folder: str | None, name: str) -> Path | None:
    if not folder:
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


def _lcp_python(venv: str | None) -> Path | None:
    if not venv:
        return None
    python = Path(venv) / "bin/python"
    return python if python.exists() else None


# -- ratios and targets ----------------------------------------------------------------------


def _summary(model_result: dict[str, Any], wl: str, label: str, level: int) -> dict[str, Any]:
    for r in model_result["workloads"].get(wl, {}).get("results", {}).get(label, []):
        if r["level"] == level:
            return r["summary"]  # type: ignore[no-any-return]
    return {}


def ratios(m: dict[str, Any]) -> dict[str, Any]:
    """llmd divided by each peer, per workload and level, for the headline metrics."""
    out: dict[str, Any] = {}
    for wl_name, wl in m["workloads"].items():
        mine = {r["level"]: r["summary"] for r in wl["results"].get("llmd", [])}
        for peer, results in wl["results"].items():
            if peer == "llmd":
                continue
            for r in results:
                ours = mine.get(r["level"])
                if not ours:
                    continue
                row = {}
                for key in ("output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50",
                            "e2e_ms.p50", "ttft_later_turns_p50_ms"):  # fmt: skip
                    a, b = ours.get(key), r["summary"].get(key)
                    if a is not None and b:
                        row[key] = a / b
                out.setdefault(wl_name, {}).setdefault(peer, {})[str(r["level"])] = row
    return out


def targets(m: dict[str, Any], parallel: int) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, measured, met); met is None when a number is missing."""
    rows: list[tuple[str, str, bool | None]] = []
    ours = _summary(m, "sweep", "llmd", parallel)
    peer = _summary(m, "sweep", "llama-server", parallel)
    if ours and peer:
        ratio = ours["output_tokens_per_s"] / peer["output_tokens_per_s"]
        rows.append(
            (
                f"{parallel} streams: output tok/s >= 1.25x llama-server -np {parallel}",
                f"{ours['output_tokens_per_s']:.1f} vs {peer['output_tokens_per_s']:.1f}: "
                f"{ratio:.2f}x",
                ratio >= 1.25,
            )
        )
        rows.append(
            (
                f"{parallel} streams: median TTFT <= llama-server's",
                f"{ours['ttft_ms.p50']:.0f} ms vs {peer['ttft_ms.p50']:.0f} ms",
                ours["ttft_ms.p50"] <= peer["ttft_ms.p50"],
            )
        )
    ours = _summary(m, "multiturn", "llmd", _level(m, "multiturn"))
    peer = _summary(m, "multiturn", "llama-server", _level(m, "multiturn"))
    key = "ttft_later_turns_p50_ms"
    if ours.get(key) and peer.get(key):
        rows.append(
            (
                "multi-turn: median TTFT of later turns <= llama-server's",
                f"{ours[key]:.0f} ms vs {peer[key]:.0f} ms",
                ours[key] <= peer[key],
            )
        )
    one = _summary(m, "sweep", "llmd", 1)
    lb = m["raw"].get("llama_bench", {}).get("results", {})
    tg = next((v["median"] for k, v in lb.items() if k.startswith("tg128")), None)
    threads = m.get("settings", {}).get("threads")
    tg = lb.get(f"tg128_t{threads}", {}).get("median", tg)
    if one.get("tpot_ms.p50") and tg:
        decode = 1000 / one["tpot_ms.p50"]
        rows.append(
            (
                "one stream: decode (1000 / TPOT p50) >= 0.9x llama-bench tg128",
                f"{decode:.1f} vs {tg:.1f} tok/s: {decode / tg:.2f}x",
                decode >= 0.9 * tg,
            )
        )
    over = _summary(m, "overload", "llmd", _level(m, "overload"))
    if over:
        accepted = over["requests"] - over["refusals"]
        rows.append(
            (
                "overload: only 503/429 refusals; every accepted request completes",
                f"{over['refusals']} refused, {over['ok']} of {accepted} accepted completed, "
                f"{over['errors']} errors",
                over["errors"] == 0 and over["ok"] == accepted,
            )
        )
    return rows


def _level(m: dict[str, Any], wl: str) -> int:
    results = m["workloads"].get(wl, {}).get("results", {}).get("llmd", [])
    return int(results[0]["level"]) if results else 0


# -- report ----------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _spread(s: dict[str, Any], key: str, digits: int = 1) -> str:
    v = s.get(key)
    if v is None:
        return "-"
    lo, hi = s.get(f"{key}.spread", [v, v])
    if lo == hi:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark {results['date']} on {results['machine']['hostname']}",
        "",
        f"- machine: {results['machine']['cpu']}, {results['machine']['cpus']} CPUs, "
        f"{results['machine']['ram_gb']:.0f} GB RAM, {results['machine']['platform']}",
        f"- note: {results['note']}" if results.get("note") else "",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in results['settings'].items())}",
        f"- command: `{results['command']}`",
        "",
    ]
    for m in results["models"]:
        lines += _model_markdown(m, results["settings"])
    return "\n".join(line for line in lines if line is not None) + "\n"


def _model_markdown(m: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    lines = [f"## {m['model']['name']}", ""]
    lines.append(
        f"Endpoint /v1/{m.get('endpoint', 'chat')}. Elapsed {m['elapsed_s'] / 60:.1f} min "
        f"(estimated {m['estimated_s'] / 60:.1f}). "
        "Medians of the repeats; the spread (min-max over repeats) in brackets."
    )
    lines += ["", "### Raw engine speed (no HTTP)", "", "| measure | tok/s |", "|---|---|"]
    for key, v in m["raw"].get("llama_bench", {}).get("results", {}).items():
        lines.append(
            f"| llama-bench {key} | {v['median']:.1f} ({v['spread'][0]:.1f}-{v['spread'][1]:.1f}) |"
        )
    for key, v in m["raw"].get("llmd_engine", {}).items():
        lines.append(
            f"| llmd engine in-process, {key.removesuffix('_tok_s')} | {v['median']:.1f} |"
        )
    for wl_name, wl in m["workloads"].items():
        lines += ["", f"### {wl['title']}", ""]
        lines.append(
            "| contender | clients | out tok/s | req/s | TTFT p50/p90/p99 ms | "
            "TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | e2e p50/p90/p99 ms | cached tok | "
            "ok / refused / errors | peak RSS MB |"
        )
        lines.append("|---" * 11 + "|")
        for label, results in wl["results"].items():
            for r in results:
                s = r["summary"]
                trip = {
                    metric: "/".join(_ms(s.get(f"{metric}.{p}")) for p in ("p50", "p90", "p99"))
                    for metric in ("ttft_ms", "e2e_ms")
                }
                fine = {
                    metric: "/".join(
                        "-" if s.get(f"{metric}.{p}") is None else f"{s[f'{metric}.{p}']:.1f}"
                        for p in ("p50", "p90", "p99")
                    )
                    for metric in ("tpot_ms", "itl_ms")
                }
                lines.append(
                    f"| {label} | {r['level']} | {_spread(s, 'output_tokens_per_s')} | "
                    f"{_spread(s, 'requests_per_s', 2)} | {trip['ttft_ms']} | {fine['tpot_ms']} | "
                    f"{fine['itl_ms']} | {trip['e2e_ms']} | "
                    f"{s.get('cached_prompt_tokens', 0):.0f} of {s.get('prompt_tokens', 0):.0f} | "
                    f"{s['ok']} / {s['refusals']} / {s['errors']} | "
                    f"{r['peak_rss_bytes'] / 1e6:.0f} |"
                )
        if wl_name == "multiturn":
            lines += ["", "| contender | TTFT p50 first turns ms | TTFT p50 later turns ms |",
                      "|---|---|---|"]  # fmt: skip
            for label, results in wl["results"].items():
                s = results[0]["summary"]
                lines.append(
                    f"| {label} | {_spread(s, 'ttft_first_turn_p50_ms', 0)} | "
                    f"{_spread(s, 'ttft_later_turns_p50_ms', 0)} |"
                )
    lines += ["", "### llmd / peer", ""]
    lines.append("| workload | peer | clients | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 |")
    lines.append("|---|---|---|---|---|---|---|")
    for wl_name, peers in m["ratios"].items():
        for peer, levels in peers.items():
            for level, row in levels.items():
                cells = [
                    "-" if row.get(k) is None else f"{row[k]:.2f}x"
                    for k in ("output_tokens_per_s", "ttft_ms.p50", "ttft_ms.p99", "tpot_ms.p50")
                ]
                lines.append(f"| {wl_name} | {peer} | {level} | " + " | ".join(cells) + " |")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, met in targets({**m, "settings": settings}, settings["parallel"]):
        lines.append(
            f"| {target} | {measured} | {'-' if met is None else 'yes' if met else '**no**'} |"
        )
    lines += ["", "Servers as started:", ""]
    for label, srv in m["servers"].items():
        argv = " ".join(
            Path(a).name
            if a.startswith("/") and a.endswith(("python", "llmd", "llama-server"))
            else a
            for a in srv["argv"]
        )
        lines.append(f"- {label}: `{argv}`, peak RSS {srv.get('peak_rss_bytes', 0) / 1e6:.0f} MB")
    lines.append("")
    return lines


PEER_BIN = Path.home() / ".cache" / "llmd-bench" / "llama.cpp-0.3.36" / "bin"


def peer_args(parser: argparse.ArgumentParser) -> None:
    """The options of a comparison with llama-server alone (bench.embed, bench.structured)."""
    parser.add_argument("--model", type=Path, default=MODELS["smollm2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bin", type=Path, default=PEER_BIN, help="llama-server's folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-batch", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)


def peer_setup(args: argparse.Namespace, work: Path, parallel: int = 16) -> Setup:
    return Setup(
        model=args.model,
        threads=args.threads,
        threads_batch=args.threads_batch,
        ctx=2048,
        parallel=parallel,
        max_queue=32,
        work=work,
        llama_server=args.bin / "llama-server",
        lcp_python=None,
    )


T = TypeVar("T")


def take_turn(server: Server, turn: Callable[[Server], T]) -> T:
    """One contender's turn on a server started for it: the server is stopped afterwards, and
    if the turn failed the end of its log is shown (a crash is told there, not in the error)."""
    try:
        return turn(server)
    except Exception:
        tail = server.log_path.read_text(errors="replace")[-3000:]
        print(f"{server.label} failed (process: {server.proc.poll()}); its log ends:\n{tail}")
        raise
    finally:
        server.stop()


def spread(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Median, min and max of every measure over the repeats, keyed `<label>.<measure>`."""
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        for key in results[0]:
            values = [r[key] for r in results]
            summary[f"{label}.{key}"] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return summary


def write_results(out: Path | None, name: str, args: argparse.Namespace, **fields: Any) -> None:
    """An engine probe's results as JSON (default bench/results/<name>-<date>.json), with the
    model, thread counts and OpenMP policy they were measured under."""
    out = out or ROOT / "bench" / "results" / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    head = {"model": str(args.model), "threads": args.threads, "threads_batch": args.threads_batch}
    head["omp_wait_policy"] = os.environ["OMP_WAIT_POLICY"]
    out.write_text(json.dumps({**head, **fields}, indent=1) + "\n")
    print(f"written: {out}")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node() or "machine",
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": psutil.virtual_memory().total / 1e9,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def versions(args: argparse.Namespace) -> dict[str, str]:
    out = {"python": platform.python_version()}
    done = subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "-c",
            "import llmd, llama_cpp; print(llmd.__version__, llama_cpp.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        llmd_v, lcp_v = done.stdout.split()
        out["llmd"] = llmd_v
        out["llama-cpp-python"] = lcp_v
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if git.returncode == 0:
        out["llmd commit"] = git.stdout.strip()
    server = _binary(args.llama_cpp_bin, "llama-server")
    if server is not None:
        done = subprocess.run([str(server), "--version"], capture_output=True, text=True)
        found = re.search(r"version: (.+)", done.stdout + done.stderr)
        if found:
            out["llama.cpp"] = found.group(1).strip()
    return out


def _models(values: list[str]) -> list[Path]:
    paths: list[Path] = []
    for v in values or ["smollm2"]:
        if v == "all":
            paths += MODELS.values()
        elif v in MODELS:
            paths.append(MODELS[v])
        else:
            paths.append(Path(v))
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"bench: no model file {p}")
    return paths


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="GGUF path, or smollm2 (default), gemma3, all; repeatable",
    )
    p.add_argument(
        "--contenders",
        type=lambda t: t.split(","),
        default=list(DEFAULT_CONTENDERS),
        help=f"comma list of {', '.join(CONTENDERS)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="end-to-end check: levels 1,4, one repeat, short outputs (~5 min)",
    )
    p.add_argument("--repeats", type=int, help="measured runs per workload (default 3; quick 1)")
    p.add_argument("--levels", type=_levels, help="sweep levels (default 1,4,16)")
    p.add_argument(
        "--workloads",
        type=lambda t: t.split(","),
        default=list(WORKLOADS),
        help=f"comma list of {', '.join(WORKLOADS)} (default all)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, cores - 1),
        help="decode threads, every contender (default: llmd's automatic choice)",
    )
    p.add_argument(
        "--threads-batch",
        type=int,
        default=cores,
        help="prompt threads, every contender (default: llmd's automatic choice)",
    )
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--parallel", type=int, default=16, help="slots (llmd and llama-server -np)")
    p.add_argument("--max-queue", type=int, default=32, help="llmd's queue (overload workload)")
    p.add_argument("--llama-cpp-bin", help="folder with llama-server and llama-bench")
    p.add_argument("--lcp-venv", help="venv with llama-cpp-python[server]")
    p.add_argument("--plot-python", help="python with matplotlib, for the PNG plots")
    p.add_argument(
        "--endpoint",
        choices=("chat", "completions"),
        help="default: chat if the GGUF has a chat template, else completions",
    )
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'busy')")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results")
    p.add_argument("--estimate", action="store_true", help="print the estimated duration, exit")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.levels is None:
        # 2, 8 and 32 are left out by default to keep a full run of one model under 25
        # minutes on 2 cores (~19 estimated); --levels 1,2,4,8,16,32 runs the whole sweep.
        args.levels = [1, 4] if args.quick else [1, 4, 16]
    bad = set(args.contenders) - set(CONTENDERS) | set(args.workloads) - set(WORKLOADS)
    if bad:
        p.error(f"unknown contenders or workloads: {', '.join(sorted(bad))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = _models(args.model)
    workloads = plan(args)
    for model in models:
        tg = 80.0 * 98e6 / model.stat().st_size
        eta = estimate_seconds(workloads, args.contenders, args.repeats, tg, 270.0)
        log(
            f"{model.name}: estimated {eta / 60 + 1.5:.0f} min (from the file size; refined "
            "after llama-bench)"
        )
    if args.estimate:
        return 0
    results: dict[str, Any] = {
        "tool": "llmd-bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "note": args.note,
        "versions": versions(args),
        "command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {
            "threads": args.threads,
            "threads_batch": args.threads_batch,
            "omp_wait_policy": _omp_env()["OMP_WAIT_POLICY"],
            "ctx_per_seq": args.ctx,
            "parallel": args.parallel,
            "max_queue": args.max_queue,
            "repeats": args.repeats,
            "levels": ",".join(map(str, args.levels)),
            "quick": args.quick,
            "contenders": ",".join(args.contenders),
        },
        "models": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}-{results['machine']['hostname']}"
    if args.quick:
        stem += "-quick"
    path = args.out / f"{stem}.json"
    n = 2
    while path.exists():
        path = args.out / f"{stem}-{n}.json"
        n += 1

    def save(partial: dict[str, Any]) -> None:
        doc = {**results, "models": [*results["models"], partial], "partial": True}
        path.write_text(json.dumps(doc, indent=1) + "\n")

    log(f"results go to {path} (written after every measurement)")
    for model in models:
        m = bench_model(args, model, save)
        results["models"].append(m)
    path.write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    path.with_suffix(".md").write_text(report)
    if args.plot_python:
        done = subprocess.run([args.plot_python, str(ROOT / "bench/plots.py"), str(path)])
        if done.returncode != 0:
            log("plots failed (results are kept)")
    print(report)
    log(f"results: {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
