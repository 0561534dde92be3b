"""The benchmark tool (bench/harness.py, bench/workloads.py): a workload measured through the real
daemon; what the report computes from the runs is tested in tests/unit/test_bench_report.py. The
peers (llama-server, llama-cpp-python) are exercised by `scripts/bench --quick`, not here:
building them takes minutes."""

from __future__ import annotations

from dataclasses import dataclass

from bench.harness import MemoryWatch
from bench.workloads import Workload, measure
from tests.e2e.conftest import Daemon


@dataclass
class _Target:
    label: str
    model: str
    memory: MemoryWatch
    base: str

    @property
    def url(self) -> str:
        return self.base + "/v1"


def test_a_workload_is_measured_through_the_daemon(daemon: Daemon) -> None:
    wl = Workload(
        "sweep",
        "tiny sweep",
        [3],
        {"prompt_tokens": 20, "max_tokens": 5, "ignore_eos": True},
        requests=lambda c: c,
    )
    watch = MemoryWatch(daemon.proc.pid, interval=0.05)
    try:
        result = measure(_Target("llmd", "smollm2", watch, daemon.url), wl, 3, 2, {})
    finally:
        watch.stop()
    assert len(result["runs"]) == 2
    s = result["summary"]
    assert s["ok"] == 6 and s["errors"] == 0 and s["refusals"] == 0
    assert all(run["output_tokens"] == 15 for run in result["runs"])
    lo, hi = s["output_tokens_per_s.spread"]
    assert lo <= s["output_tokens_per_s"] <= hi and lo > 0
    assert s["ttft_ms.p50"] <= s["ttft_ms.p90"] <= s["ttft_ms.p99"]
    assert s["e2e_ms.p50"] >= s["ttft_ms.p50"]
    # The daemon and its model process together hold at least the model file.
    assert result["peak_rss_bytes"] > 50e6
    # Fresh prompts per repeat: the second repeat found none of the first's prompts cached,
    # only what every SmolLM2 chat prompt starts with (its template's 24-token preamble).
    assert all(run["cached_prompt_tokens"] <= 3 * 24 for run in result["runs"])
    assert all(run["prompt_tokens"] > 3 * 40 for run in result["runs"])
