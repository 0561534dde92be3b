"""The speculative benchmark's pure parts (bench/spec_report.py, bench/spec_texts.py and the
command line of bench/speculative.py) on made-up numbers: medians over repeats, llmd's ratio
to each peer, the targets, the tables, the metrics read from /metrics, and the prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.loadstats import RequestResult
from bench.spec_report import (
    aggregate_speed,
    cell_seconds,
    copied_fraction,
    markdown_tables,
    metric_sum,
    ratio,
    ratios,
    summarize,
    targets,
    targets_table,
    window_rate,
)
from bench.spec_texts import MAX_TOKENS, WORKLOADS, prompt
from bench.speculative import (
    FULL,
    MODES,
    arm,
    contenders,
    parse_args,
    pick_contenders,
    plan_turns,
    sampling_body,
)


def _cell(arm_: str, tok_s: float, repeat: int = 0, **kw: Any) -> dict[str, Any]:
    cell = {
        "model": "m",
        "workload": "code_edit",
        "level": 1,
        "mode": "greedy",
        "arm": arm_,
        "repeat": repeat,
        "output_tokens_per_s": tok_s,
        "tpot_ms_p50": 1000 / tok_s,
        "ttft_ms_p50": 100.0,
        "ok": 2,
        "errors": 0,
        "empty": 0,
        "at_limit": 1,
        "output_tokens": 1000,
        "copied": 0.5,
        "drafted": None,
        "accepted": None,
    }
    return {**cell, **kw}


def test_summaries_are_medians_with_spread_and_sums() -> None:
    s = summarize(
        [
            _cell("llmd", 30, 0, drafted=10, accepted=5),
            _cell("llmd", 50, 1, drafted=20, accepted=15, errors=1),
            _cell("llmd", 40, 2, drafted=30, accepted=10, empty=2),
        ]
    )[("m", "code_edit", 1, "greedy", "llmd")]
    assert s["tok_s"] == 40 and s["tok_s_spread"] == [30, 50]
    assert s["tpot_ms_p50"] == 25.0
    assert (s["ok"], s["errors"], s["empty"], s["at_limit"]) == (6, 1, 2, 3)
    assert (s["drafted"], s["accepted"]) == (60, 30)
    assert s["repeats"] == 3


def test_counts_a_server_does_not_give_stay_unknown() -> None:
    s = summarize([_cell("llama-server", 30)])[("m", "code_edit", 1, "greedy", "llama-server")]
    assert s["drafted"] is None and s["accepted"] is None


def test_ratio_is_within_one_cell() -> None:
    summaries = summarize(
        [
            _cell("llmd", 60),
            _cell("llama-server", 40),
            _cell("llama-server", 10, level=16),
            _cell("llmd", 90, mode="t1"),
        ]
    )
    assert ratio(summaries, ("m", "code_edit", 1, "greedy", "llmd"), "llama-server") == 1.5
    # No llama-server at t1 in this run: no ratio rather than one against another cell.
    assert ratio(summaries, ("m", "code_edit", 1, "t1", "llmd"), "llama-server") is None


def test_table_rows_carry_the_ratio_and_acceptance() -> None:
    summaries = summarize(
        [
            _cell("llmd", 60, drafted=40, accepted=30),
            _cell("llama-server", 30, at_limit=2),
            _cell("llama-server+ngram-mod", 40),
        ]
    )
    table = markdown_tables(summaries)
    assert "### m: code_edit, 1 client" in table
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| 60.0 | 1.00x |" in rows["llmd"] and "30/40 (75%)" in rows["llmd"]
    assert "| 30.0 | 2.00x |" in rows["llama-server"] and "| 2 (2)/0/0 |" in rows["llama-server"]
    assert "| 40.0 | 1.50x |" in rows["llama-server+ngram-mod"]
    assert "| - |" in rows["llama-server"]  # no acceptance counts for a peer


def test_rows_grouped_by_mode() -> None:
    table = markdown_tables(
        summarize(
            [
                _cell("llmd", 60),
                _cell("llmd", 50, mode="t1"),
                _cell("llama-server", 40),
                _cell("llama-server", 30, mode="t1"),
            ]
        )
    )
    rows = [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| greedy")
            or line.startswith("| t1")]  # fmt: skip
    assert rows == [["| greedy", "llmd"], ["| greedy", "llama-server"], ["| t1", "llmd"],
                    ["| t1", "llama-server"]]  # fmt: skip


def test_spread_shown_only_over_repeats() -> None:
    one = markdown_tables(summarize([_cell("llmd", 60)]))
    two = markdown_tables(summarize([_cell("llmd", 60), _cell("llmd", 40, repeat=1)]))
    assert "| 60.0 |" in one
    assert "| 50.0 (40.0-60.0) |" in two


def _verdicts(cells: list[dict[str, Any]]) -> dict[str, tuple[str, bool | None]]:
    return {what: (measured, met) for what, measured, met in targets(summarize(cells))}


def test_one_stream_targets_against_plain_and_the_best_ngram_mode() -> None:
    got = _verdicts(
        [
            _cell("llmd", 60),
            _cell("llama-server", 40),
            _cell("llama-server+ngram-simple", 45),
            _cell("llama-server+ngram-mod", 66),
        ]
    )
    plain = got["m code_edit c=1 greedy: llmd >= 1.5x llama-server (one stream, repetitive)"]
    assert plain == ("1.50x", True)
    best = got["m code_edit c=1 greedy: llmd >= 1x llama-server+ngram-mod (best n-gram mode)"]
    assert best == ("0.91x", False)
    assert len(got) == 2  # greedy: no sampled-speed target; level 1: no 16-client one


def test_sampled_targets_at_both_peer_samplings_and_free_chat() -> None:
    common = {"workload": "chat", "mode": "t1"}
    got = _verdicts(
        [
            _cell("llmd", 50, **common),
            _cell("llama-server", 50.5, **common),
            _cell("llama-server top_k=0", 40, **common),
        ]
    )
    assert got["m chat c=1 t1: llmd >= 1x llama-server (sampled speed)"] == ("0.99x", False)
    exact = got["m chat c=1 t1: llmd >= 1x llama-server top_k=0 (sampled speed, exact)"]
    assert exact == ("1.25x", True)
    assert got["m chat c=1 t1: llmd >= 0.97x llama-server (free chat)"] == ("0.99x", True)


def test_sixteen_clients_never_slower_than_speculation_off() -> None:
    at16 = {"level": 16, "workload": "json"}
    got = _verdicts([_cell("llmd", 99, **at16), _cell("llmd-nospec", 100, **at16)])
    assert got == {"m json c=16 greedy: llmd >= 1x llmd-nospec (never slower)": ("0.99x", False)}
    table = targets_table(targets(summarize([_cell("llmd", 99, **at16),
                                             _cell("llmd-nospec", 100, **at16)])))  # fmt: skip
    assert "| 0.99x | **no** |" in table


METRICS = """\
# HELP llmd_speculative_drafted_tokens_total Tokens drafted.
# TYPE llmd_speculative_drafted_tokens_total counter
llmd_speculative_drafted_tokens_total{model="bench"} 120.0
llmd_speculative_drafted_tokens_total{model="other"} 7.0
llmd_speculative_drafted_tokens_totals{model="bench"} 1000.0
llmd_speculative_accepted_tokens_total{model="bench"} 90.0
llmd_requests_total{endpoint="/v1/chat/completions",model="bench"} 3.0
"""


def test_metric_sum_reads_one_model_or_all() -> None:
    assert metric_sum(METRICS, "llmd_speculative_drafted_tokens_total", "bench") == 120.0
    assert metric_sum(METRICS, "llmd_speculative_drafted_tokens_total") == 127.0
    assert metric_sum(METRICS, "llmd_speculative_accepted_tokens_total", "bench") == 90.0
    assert metric_sum(METRICS, "llmd_speculative_rejected_total", "bench") is None


def test_copied_fraction() -> None:
    source = "a b c d e f g h"
    assert copied_fraction(source, "a b c d e") == 1.0
    assert copied_fraction(source, "a b c d x y z w") == 0.2  # 1 of 5 four-grams
    assert copied_fraction(source, "a b c") is None


def test_estimate_of_one_cell() -> None:
    assert aggregate_speed(80.0, 1) == 80.0
    assert aggregate_speed(80.0, 16) == pytest.approx(80.0 * 16 / 5.95)
    # One request per client, no duration: one round of 4 answers of 900 tokens and 4 prompts.
    seconds = cell_seconds(80.0, 270.0, 4, 540, 900, "code_edit", 1, 0.0)
    assert seconds == pytest.approx(4 * 900 / aggregate_speed(80.0, 4) + 4 * 540 / 270)
    # A duration of 100 s in rounds of ~25 s: four rounds.
    assert cell_seconds(80.0, 270.0, 4, 540, 900, "code_edit", 1, 100.0) == pytest.approx(
        4 * seconds
    )


def test_peers_sample_at_their_defaults_or_as_llmd() -> None:
    assert sampling_body("greedy", "default") == {"temperature": 0.0}
    assert sampling_body("t1", "default") == {"temperature": 1.0}
    assert sampling_body("t1", "top_k0") == {
        "temperature": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "top_p": 1.0,
    }
    assert sampling_body("t0.7-p0.95", "top_k0")["top_p"] == 0.95


def test_contenders_follow_the_spec_types_llama_server_lists() -> None:
    available = contenders(["none", "draft-simple", "ngram-simple", "ngram-mod"])
    assert list(available) == [
        "llmd",
        "llmd-nospec",
        "llmd-always",
        "llama-server",
        "llmd-k4",
        "llmd-k16",
        "llmd-k32",
        "llmd-k64",
        "llmd-ngram4",
        "llmd-ngram8",
        "llmd-ngram12",
        "llmd-ngram16",
        "llama-server+ngram-simple",
        "llama-server+ngram-mod",
    ]
    assert available["llama-server+ngram-mod"].flags == ("--spec-type", "ngram-mod")
    assert "enabled = false" in available["llmd-nospec"].toml
    assert "max_draft = 32" in available["llmd-k32"].toml
    picked = pick_contenders(["llmd", "ngram", "llama-server+ngram-cache"], available)
    assert [c.name for c in picked] == [
        "llmd",
        "llama-server+ngram-simple",
        "llama-server+ngram-mod",
    ]
    with pytest.raises(SystemExit):
        pick_contenders(["lmd"], available)
    assert arm(available["llama-server"], "top_k0") == "llama-server top_k=0"
    assert arm(available["llmd"], "default") == "llmd"


def test_a_peer_takes_a_turn_per_sampling_and_greedy_once() -> None:
    available = contenders(["ngram-mod"])
    chosen = [available["llmd"], available["llama-server"], available["llama-server+ngram-mod"]]
    turns = plan_turns(chosen, ["greedy", "t1"], ["default", "top_k0"])
    assert [(t.name, t.modes) for t in turns] == [
        ("llmd", ("greedy", "t1")),
        ("llama-server", ("greedy", "t1")),
        ("llama-server top_k=0", ("t1",)),
        ("llama-server+ngram-mod", ("greedy", "t1")),
        ("llama-server+ngram-mod top_k=0", ("t1",)),
    ]
    # Greedy alone: top_k changes nothing, so one turn a peer.
    greedy = plan_turns(chosen, ["greedy"], ["default", "top_k0"])
    assert [t.name for t in greedy] == ["llmd", "llama-server", "llama-server+ngram-mod"]


def test_quick_changes_defaults_and_explicit_options_win(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    quick = parse_args(["--quick", "--levels", "1,4", "--models", str(model)])
    assert quick.level_list == [1, 4] and quick.repeats == 1
    assert quick.workload_list == ["code_edit", "chat"]
    full = parse_args(["--models", str(model)])
    assert full.level_list == [1, 4, 16] and full.repeats == 3
    assert full.workload_list == list(WORKLOADS) and full.mode_list == list(MODES)
    assert full.model_paths == [model]
    assert FULL["models"] == "smollm2,gemma3"
    with pytest.raises(SystemExit):
        parse_args(["--modes", "t2", "--models", str(model)])
    with pytest.raises(SystemExit):
        parse_args(["--models", str(tmp_path / "missing.gguf")])


def test_prompts_are_fixed_per_key_and_differ_between_keys() -> None:
    for workload in WORKLOADS:
        assert prompt(workload, "r0/1") == prompt(workload, "r0/1")
        assert workload in MAX_TOKENS
    assert prompt("code_edit", "a") != prompt("code_edit", "b")
    code = prompt("code_edit", "a").split("```python\n")[1].split("```")[0]
    assert len(code.splitlines()) == 60
    assert "__" not in code  # every placeholder filled
    table = prompt("json", "a")
    assert sum(line.startswith("| ") for line in table.splitlines()) == 16  # header + 15 rows


def test_plot_ratios_are_llmd_against_each_contender_per_cell() -> None:
    summary = [
        {"key": [*key, arm_], **values}
        for key, arm_, values in [
            (("m", "code_edit", 1, "greedy"), "llmd", {"tok_s": 60.0, "tpot_ms_p50": 10.0}),
            (("m", "code_edit", 1, "greedy"), "llama-server", {"tok_s": 30.0, "tpot_ms_p50": 25.0}),
            (("m", "code_edit", 1, "greedy"), "llmd-nospec", {"tok_s": 40.0, "tpot_ms_p50": 0.0}),
            (("m", "chat", 16, "t1"), "llmd", {"tok_s": 90.0, "tpot_ms_p50": 100.0}),
            (("m", "chat", 16, "t1"), "llama-server", {"tok_s": 100.0, "tpot_ms_p50": 90.0}),
            (("m", "json", 1, "greedy"), "llama-server", {"tok_s": 30.0}),  # no llmd: left out
        ]
    ]
    got = ratios(summary)
    assert got == {
        "m": {
            "code_edit, 1 client, greedy": {"llama-server": (2.0, 2.5), "llmd-nospec": (1.5, 0.0)},
            "chat, 16 clients, t1": {"llama-server": (0.9, 0.9)},
        }
    }


def test_window_rate_counts_the_tokens_delivered_before_the_clients_stopped_sending() -> None:
    # Sent at 100 s; chunks at 101, 102, ..., 110 (10 chunks, 20 tokens): 5 of them by 105.
    early = RequestResult(ok=True, started_s=100.0, ttft_s=1.0, itl_s=[1.0] * 9)
    early.completion_tokens = 20
    # Sent at 104: first chunk at 106, past the window: nothing of it counts.
    late = RequestResult(ok=True, started_s=104.0, ttft_s=2.0, itl_s=[0.5] * 3)
    late.completion_tokens = 4
    failed = RequestResult(ok=False, started_s=100.0, ttft_s=0.5)
    assert window_rate([early, late, failed], start=100.0, duration=5.0) == 20 * 5 / 10 / 5.0
    assert window_rate([early], start=100.0, duration=0.0) is None  # no window: a count only


def test_the_table_shows_each_row_window_rate_and_llmd_over_it() -> None:
    cells = [_cell("llmd", 60, window_tok_s=50.0), _cell("llama-server", 30, window_tok_s=40.0)]
    table = markdown_tables(summarize(cells))
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["llmd"].endswith("| 50.0 (1.00x) |")
    assert rows["llama-server"].endswith("| 40.0 (1.25x) |")
