"""The benchmark report (bench/report.py) on made-up runs: summaries as medians with their spread,
the ratios to the peers, the targets met or missed, and the markdown of it all."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import markdown, ratios, summarize_runs, targets


def _run(
    tok_s: float, ttft: float, ok: int = 4, refusals: int = 0, errors: int = 0
) -> dict[str, Any]:
    lat = {"p50": ttft, "p90": ttft * 1.5, "p99": ttft * 2, "mean": ttft, "n": ok}
    return {
        "output_tokens_per_s": tok_s,
        "requests_per_s": tok_s / 100,
        "ttft_ms": lat,
        "tpot_ms": {**lat, "p50": 1000 / tok_s},
        "itl_ms": lat,
        "e2e_ms": {**lat, "p50": ttft * 10},
        "cached_prompt_tokens": 0,
        "prompt_tokens": 600,
        "ok": ok,
        "refusals": refusals,
        "errors": errors,
        "requests": ok + refusals + errors,
        "error_samples": [],
        "ttft_first_turn_p50_ms": None,
        "ttft_later_turns_p50_ms": ttft if tok_s else None,
    }


def _level(level: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"level": level, "summary": summarize_runs(runs), "peak_rss_bytes": 1e9, "runs": runs}


def test_summaries_are_medians_with_spread() -> None:
    s = summarize_runs([_run(90, 100), _run(100, 300), _run(80, 200, errors=1)])
    assert s["output_tokens_per_s"] == 90
    assert s["output_tokens_per_s.spread"] == [80, 100]
    assert s["ttft_ms.p50"] == 200 and s["ttft_ms.p99"] == 400
    assert s["errors"] == 1 and s["ok"] == 12


def _model() -> dict[str, Any]:
    def sweep(fast: float, ttft: float) -> list[dict[str, Any]]:
        return [_level(1, [_run(60, 200)] * 3), _level(16, [_run(fast, ttft)] * 3)]

    return {
        "model": {"name": "m.gguf", "path": "m.gguf", "bytes": 1},
        "raw": {"llama_bench": {"results": {"tg128_t1": {"median": 62.0, "spread": [61, 63]}}}},
        "workloads": {
            "sweep": {
                "title": "sweep",
                "params": {},
                "results": {"llmd": sweep(100, 1000), "llama-server": sweep(70, 3000)},
            },
            "multiturn": {
                "title": "multi-turn",
                "params": {},
                "results": {
                    "llmd": [_level(4, [_run(50, 500)])],
                    "llama-server": [_level(4, [_run(50, 400)])],
                },
            },
            "overload": {
                "title": "overload",
                "params": {},
                "results": {"llmd": [_level(96, [_run(10, 900, ok=48, refusals=48)])]},
            },
        },
        "servers": {"llmd": {"argv": ["llmd"], "peak_rss_bytes": 1e9}},
        "elapsed_s": 60.0,
        "estimated_s": 70.0,
    }


def test_ratios_and_targets() -> None:
    m = _model()
    m["ratios"] = ratios(m)
    assert m["ratios"]["sweep"]["llama-server"]["16"]["output_tokens_per_s"] == 100 / 70
    assert m["ratios"]["sweep"]["llama-server"]["16"]["ttft_ms.p50"] == 1000 / 3000
    met = {t: ok for t, _, ok in targets({**m, "settings": {"threads": 1}}, 16)}
    assert met["16 streams: output tok/s >= 1.25x llama-server -np 16"] is True
    assert met["16 streams: median TTFT <= llama-server's"] is True
    # 500 ms against llama-server's 400: missed.
    assert met["multi-turn: median TTFT of later turns <= llama-server's"] is False
    assert met["one stream: decode (1000 / TPOT p50) >= 0.9x llama-bench tg128"] is True
    assert met["overload: only 503/429 refusals; every accepted request completes"] is True

    broken = copy.deepcopy(m)
    broken["workloads"]["overload"]["results"]["llmd"] = [
        _level(96, [_run(10, 900, ok=40, refusals=48, errors=8)])
    ]
    met = {t: ok for t, _, ok in targets({**broken, "settings": {"threads": 1}}, 16)}
    assert met["overload: only 503/429 refusals; every accepted request completes"] is False


def test_markdown_report_has_every_workload_and_the_ratios() -> None:
    m = _model()
    m["ratios"] = ratios(m)
    results = {
        "date": "2026-11-24 20:00:00 UTC",
        "machine": {"hostname": "box", "cpu": "cpu", "cpus": 2, "ram_gb": 8, "platform": "x"},
        "note": "busy machine",
        "versions": {"llmd": "0.1.0"},
        "settings": {"threads": 1, "parallel": 16},
        "command": "scripts/bench --quick",
        "models": [m],
    }
    text = markdown(results)
    for needle in ("## m.gguf", "### sweep", "### multi-turn", "### overload", "| llmd / peer"):
        assert needle in text or needle.replace("| ", "### ") in text
    assert "| sweep | llama-server | 16 | 1.43x | 0.33x |" in text
    assert "busy machine" in text
