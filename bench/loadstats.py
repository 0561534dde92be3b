"""What a load run measured: per-request results, latency percentiles, a run's summary, and
the markdown table of runs (bench/loadgen.py makes them; the bench scripts read them)."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    ok: bool = False
    status: int | None = None
    refused: bool = False
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    turn: int = 1
    started_s: float | None = None
    """When the request was sent (time.perf_counter): with ttft_s and itl_s, when each chunk
    came."""


@dataclass
class LatencyStats:
    """Milliseconds; ``None`` where there were no samples."""

    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    n: int

    @classmethod
    def from_seconds(cls, values: Sequence[float]) -> "LatencyStats":
        ms = [v * 1000.0 for v in values]
        return cls(
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            mean=sum(ms) / len(ms) if ms else None,
            n=len(ms),
        )


@dataclass
class RunResult:
    label: str
    url: str
    model: str
    mode: str
    endpoint: str
    concurrency: int
    requests: int
    ok: int
    refusals: int
    errors: int
    status_codes: dict[str, int]
    error_samples: list[str]
    duration_s: float
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    prompt_tokens: int
    cached_prompt_tokens: int
    ttft_first_turn_p50_ms: float | None = None
    ttft_later_turns_p50_ms: float | None = None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(runs: Sequence[RunResult]) -> str:
    columns: list[tuple[str, Callable[[RunResult], str]]] = [
        ("label", lambda r: r.label or "-"),
        ("conc", lambda r: str(r.concurrency)),
        ("ok", lambda r: str(r.ok)),
        ("refused", lambda r: str(r.refusals)),
        ("errors", lambda r: str(r.errors)),
        ("TTFT p50 ms", lambda r: _fmt(r.ttft_ms.p50)),
        ("TTFT p99 ms", lambda r: _fmt(r.ttft_ms.p99)),
        ("TPOT p50 ms", lambda r: _fmt(r.tpot_ms.p50, 2)),
        ("ITL p99 ms", lambda r: _fmt(r.itl_ms.p99, 2)),
        ("E2E p50 ms", lambda r: _fmt(r.e2e_ms.p50)),
        ("out tok/s", lambda r: _fmt(r.output_tokens_per_s)),
        ("req/s", lambda r: _fmt(r.requests_per_s, 2)),
        ("cached tok", lambda r: str(r.cached_prompt_tokens)),
    ]
    if any(r.mode == "multiturn" for r in runs):
        columns += [
            ("TTFT p50 turn 1", lambda r: _fmt(r.ttft_first_turn_p50_ms)),
            ("TTFT p50 turns 2+", lambda r: _fmt(r.ttft_later_turns_p50_ms)),
        ]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|---" * len(columns) + "|"]
    for run in runs:
        lines.append("| " + " | ".join(cell(run) for _, cell in columns) + " |")
    return "\n".join(lines) + "\n"
