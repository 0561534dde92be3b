"""The memory budget (llmd/models/budget.py): the choice of what to unload (`choose_victims`), a
model's cost, and the service's memory limit read from its cgroup."""

from __future__ import annotations

from pathlib import Path

from llmd.gguf import Estimate
from llmd.models.budget import Holder, choose_victims, cost, service_memory_limit

MiB = 1024 * 1024
NEED = Estimate(weights=300 * MiB, kv_cache=80 * MiB, compute=20 * MiB)  # 400 MiB
PLENTY = 1 << 40


def idle(name: str, size: int, last_used: float) -> Holder:
    return Holder(name, size * MiB, last_used, unloadable=True)


def test_fits_without_unloading_anything() -> None:
    holders = [idle("a", 300, 1.0)]
    choice = choose_victims(NEED, 1000 * MiB, holders, PLENTY, 0)
    assert choice.fits and choice.victims == () and choice.refusal is None


def test_least_recently_used_idle_models_go_first_and_only_as_many_as_needed() -> None:
    holders = [idle("a", 300, 3.0), idle("b", 300, 1.0), idle("c", 300, 2.0)]
    # 900 used + 400 needed in 1,000: 300 must go -> the least recently used one, b.
    assert choose_victims(NEED, 1000 * MiB, holders, PLENTY, 0).victims == ("b",)
    # In 800: 600 must go -> b, then c.
    assert choose_victims(NEED, 800 * MiB, holders, PLENTY, 0).victims == ("b", "c")


def test_busy_pinned_draining_and_loading_versions_are_never_victims() -> None:
    holders = [
        Holder("busy", 200 * MiB, 0.0, busy=True, unloadable=True),
        Holder("pinned", 200 * MiB, 0.0, pinned=True, unloadable=True),
        Holder("draining", 200 * MiB, 0.0),  # not the current version: only counts
        idle("idle", 200, 5.0),
    ]
    # 800 used + 400 in 1,000: 200 must go, and only "idle" may.
    choice = choose_victims(NEED, 1000 * MiB, holders, PLENTY, 0)
    assert choice.victims == ("idle",) and choice.refusal is None


def test_refuses_without_unloading_when_even_all_idle_ones_would_not_make_room() -> None:
    holders = [
        Holder("a", 300 * MiB, 0.0, busy=True, unloadable=True),
        Holder("p", 200 * MiB, 0.0, pinned=True, unloadable=True),
        idle("b", 100, 1.0),
    ]
    # 600 used + 400 in 800: unloading b (100) leaves 900 > 800: b keeps serving.
    choice = choose_victims(NEED, 800 * MiB, holders, PLENTY, 0)
    assert choice.victims == ()
    refusal = choice.refusal
    assert refusal is not None and refusal.reason == "budget"
    assert (refusal.need, refusal.budget, refusal.used) == (NEED, 800 * MiB, 600 * MiB)
    assert [h.name for h in refusal.holders] == ["a", "p", "b"]
    assert refusal.message("big") == (
        "model 'big' needs about 400 MiB (weights 300 MiB, KV cache 80 MiB, other 20 MiB) but "
        "the memory budget is 800 MiB and 600 MiB is in use by a 300 MiB (busy), "
        "p 200 MiB (pinned), b 100 MiB; lower its ctx_per_seq or parallel, raise "
        "memory.budget, or unload a model"
    )


def test_refusal_with_nothing_loaded_names_no_holders() -> None:
    refusal = choose_victims(NEED, 100 * MiB, [], PLENTY, 0).refusal
    assert refusal is not None
    assert " by " not in refusal.message("m")
    assert refusal.message("m").endswith(
        "budget is 100 MiB and 0 MiB is in use; lower its ctx_per_seq or parallel, raise "
        "memory.budget, or unload a model"
    )


def test_the_system_reserve_refuses_once_the_budget_has_room() -> None:
    choice = choose_victims(NEED, PLENTY, [], 1000 * MiB, 700 * MiB)
    refusal = choice.refusal
    assert refusal is not None and refusal.reason == "reserve"
    assert (refusal.available, refusal.reserve) == (1000 * MiB, 700 * MiB)
    assert refusal.message("m") == (
        "model 'm' needs about 400 MiB but the system has only 1,000 MiB available and llmd "
        "keeps 700 MiB free (memory.reserve) so that the machine does not swap"
    )
    assert choose_victims(NEED, PLENTY, [], 1100 * MiB, 700 * MiB).fits
    # While victims are still to go, the reserve waits for the next reading.
    holders = [idle("a", 900, 1.0)]
    assert choose_victims(NEED, 1000 * MiB, holders, 0, 700 * MiB).victims == ("a",)


def test_cost_is_the_measured_peak_once_served_else_the_larger_reading() -> None:
    assert cost(estimated=500, peak_rss=0, served=False) == 500
    assert cost(estimated=500, peak_rss=300, served=False) == 500
    assert cost(estimated=500, peak_rss=700, served=False) == 700
    assert cost(estimated=500, peak_rss=300, served=True) == 300
    assert cost(estimated=500, peak_rss=0, served=True) == 500


def test_service_memory_limit_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    v2 = root / "system.slice" / "llmd.service"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("8589934592\n")
    proc.write_text("0::/system.slice/llmd.service\n")
    assert service_memory_limit(proc, root) == 8 << 30
    (v2 / "memory.max").write_text("max\n")
    assert service_memory_limit(proc, root) is None
    v1 = root / "memory" / "box"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc.write_text("4:memory:/box\n1:cpu:/\n")
    assert service_memory_limit(proc, root) is None
    (v1 / "memory.limit_in_bytes").write_text("2147483648\n")
    assert service_memory_limit(proc, root) == 2 << 30
    assert service_memory_limit(tmp_path / "missing", root) is None
