"""bench/paired.py's pure parts on made-up rounds: the arms it accepts, the ratios of paired
requests against the first arm with their interval, and the table."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.loadstats import RequestResult
from bench.paired import _arm, _tpot_ms, report, summarize
from bench.speculative import contenders


def _rounds(pairs: list[tuple[float, float | None]]) -> list[dict[str, Any]]:
    out = []
    for i, (a, b) in enumerate(pairs):
        rates = {"llmd": a} if b is None else {"llmd": a, "peer": b}
        out.append({"round": i, "order": ["llmd", "peer"], "rates": rates})
    return out


def test_ratios_are_per_round_and_a_failed_round_drops_out_of_the_pairs() -> None:
    rounds = _rounds([(60.0, 50.0), (66.0, 60.0), (55.0, 55.0), (70.0, None)])
    s = summarize(rounds, ["llmd", "peer"])
    assert s["llmd"]["rounds"] == 4 and s["llmd"]["ratio_median"] is None
    assert s["llmd"]["median_tok_s"] == pytest.approx(63.0)
    peer = s["peer"]
    assert peer["rounds"] == 3
    assert (peer["min_tok_s"], peer["max_tok_s"]) == (50.0, 60.0)
    assert peer["ratio_median"] == pytest.approx(1.1)
    assert peer["ratio_geomean"] == pytest.approx(math.exp(math.log(1.2 * 1.1) / 3))
    assert peer["ratio_low"] < peer["ratio_geomean"] < peer["ratio_high"]
    assert peer["rounds_ahead"] == 3  # a tie counts as ahead: llmd at least as fast


def test_the_interval_narrows_with_steady_pairs_even_when_the_box_swings() -> None:
    # the box's speed swings 40% between rounds, llmd stays 5% ahead within each
    swinging = _rounds([(52.5 * f, 50.0 * f) for f in (1.0, 1.4, 0.8, 1.2, 0.9, 1.1)])
    peer = summarize(swinging, ["llmd", "peer"])["peer"]
    assert peer["ratio_geomean"] == pytest.approx(1.05)
    assert peer["ratio_high"] - peer["ratio_low"] < 1e-9


def test_arms_are_contenders_with_their_own_sampling_or_prompt_threads() -> None:
    available = contenders([])
    peer, llmd = available["llama-server"], available["llmd"]
    assert _arm("llama-server@top_k0", available) == (peer, "top_k0", None, None, False)
    assert _arm("llmd", available) == (llmd, "default", None, None, False)
    assert _arm("llmd@tb1", available) == (llmd, "default", 1, None, False)
    assert _arm("llama-server@top_k0@tb1", available) == (peer, "top_k0", 1, None, False)
    assert _arm("llmd@fa-off", available) == (llmd, "default", None, "off", False)
    assert _arm("llama-server@fa-on@tb2", available) == (peer, "default", 2, "on", False)
    assert _arm("llmd@invariant", available) == (llmd, "default", None, None, True)
    for bad in (
        "llmd@top_k0",
        "llmd@tb0",
        "llmd@tbx",
        "llmd@fast",
        "llmd@fa-auto",
        "llama-server@invariant",
    ):
        with pytest.raises(SystemExit, match="@top_k0 for a llama-server"):
            _arm(bad, available)
    with pytest.raises(SystemExit, match="unknown contender"):
        _arm("ollama", available)


def test_the_table_has_a_row_per_arm_with_its_ratio_and_drafts() -> None:
    rounds = _rounds([(60.0, 50.0), (66.0, 60.0)])
    arms = ["llmd", "peer"]
    head = {
        "date": "d",
        "command": "c",
        "model": "m.gguf",
        "workload": "chat",
        "mode": "t1",
        "clients": 1,
        "rounds": 2,
        "drafts": {"llmd": (40.0, 10.0), "peer": (0.0, 0.0)},
    }
    text = report(head, summarize(rounds, arms), arms)
    llmd_row = next(line for line in text.splitlines() if line.startswith("| llmd |"))
    peer_row = next(line for line in text.splitlines() if line.startswith("| peer |"))
    assert "63.0 (60.0-66.0)" in llmd_row and "10/40" in llmd_row
    assert "| 2 of 2 |" in peer_row and "1.150x" in peer_row and peer_row.endswith("| - |")


def test_time_per_token_is_paired_too_and_a_one_token_answer_has_none() -> None:
    rounds = _rounds([(60.0, 50.0), (66.0, 60.0)])
    rounds[0]["tpot_ms"] = {"llmd": 15.0, "peer": 16.5}
    rounds[1]["tpot_ms"] = {"llmd": 15.0}  # the peer's answer had one token
    s = summarize(rounds, ["llmd", "peer"])
    assert s["llmd"]["median_tpot_ms"] == 15.0 and "tpot_ratio" not in s["llmd"]
    assert s["peer"]["tpot_ratio"]["geomean"] == pytest.approx(1.1)
    one = RequestResult(ok=True, completion_tokens=1, ttft_s=0.1, e2e_s=0.1)
    assert _tpot_ms(one) is None
    ten = RequestResult(ok=True, completion_tokens=10, ttft_s=0.1, e2e_s=0.19)
    assert _tpot_ms(ten) == pytest.approx(10.0)
