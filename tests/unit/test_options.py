"""A model's engine options (llmd/models/options.py): the automatic thread counts, and a draft
model's file in the options, the estimate and the plan."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench.daemon import GEMMA, MODELS, SMOL
from llmd.engine.client import omp_env
from llmd.engine.ngram import index_bytes
from llmd.gguf import estimate, read_model
from llmd.models import auto_threads, engine_options, estimate_for
from llmd.plan import PlanInput, make_plan
from llmd.settings import Settings, SpeculativeSettings


@pytest.mark.parametrize(("cores", "expected"), [(1, (1, 1)), (2, (1, 2)), (8, (7, 8))])
def test_auto_threads_leave_a_core_for_http(cores: int, expected: tuple[int, int]) -> None:
    assert auto_threads(cores) == expected


def test_a_draft_is_found_under_models_dir_and_counted_in_estimate_and_plan(
    tmp_path: Path,
) -> None:
    shutil.copy(MODELS / GEMMA, tmp_path / "draft.gguf")  # any GGUF: only its header is read
    settings = Settings.model_validate(
        {
            "models_dir": str(MODELS),
            # Flash attention on: no attention scores in the estimate (tested apart).
            "engine": {"ctx_per_seq": 1024, "parallel": 4, "ubatch_size": 256, "flash_attn": "on"},
            "models": {
                "plain": {"path": SMOL},
                "drafted": {"path": SMOL, "draft": str(tmp_path / "draft.gguf")},
                "relative": {"path": SMOL, "draft": GEMMA},
                "missing": {"path": SMOL, "draft": "nothing.gguf"},
            },
        }
    )
    smol, gemma = read_model(MODELS / SMOL), read_model(MODELS / GEMMA)
    ms = settings.models
    assert engine_options(settings, ms["plain"], smol.path).load.draft_path is None
    assert engine_options(settings, ms["relative"], smol.path).load.draft_path == MODELS / GEMMA
    assert (
        engine_options(settings, ms["drafted"], smol.path).load.draft_path
        == tmp_path / "draft.gguf"
    )
    with_draft = estimate(smol, 1024, 4, 256, draft=gemma)
    assert with_draft.total > estimate(smol, 1024, 4, 256).total
    # Without a draft model, drafts come from lookups: their indexes count in the estimate.
    plain = estimate(smol, 1024, 4, 256)
    with_lookups = replace(plain, compute=plain.compute + index_bytes(4, 1024))
    assert estimate_for(settings, ms["plain"], smol) == with_lookups
    assert estimate_for(settings, ms["drafted"], smol) == with_draft
    assert estimate_for(settings, ms["relative"], smol) == with_draft
    # A draft that cannot be read is not counted here: its load fails, saying why.
    assert estimate_for(settings, ms["missing"], smol) == plain
    no_spec = {"speculative": SpeculativeSettings(enabled=False)}
    off = settings.model_copy(update={"engine": settings.engine.model_copy(update=no_spec)})
    assert estimate_for(off, ms["plain"], smol) == plain

    inputs = [PlanInput(name, ms[name], smol, None) for name in ms]
    budget = 1_000_000_000  # short of the trained context at 16 slots: the KV cache decides
    rows = {r["name"]: r for r in make_plan(settings, inputs, budget, 2**40, 2**40)["models"]}
    assert rows["drafted"]["estimated_bytes"] == with_draft.total
    assert rows["plain"]["estimated_bytes"] == estimate(smol, 1024, 4, 256).total
    per_token = smol.info.kv_bytes_per_token() + gemma.info.kv_bytes_per_token()
    assert rows["drafted"]["kv_bytes_per_token"] == per_token
    alone_16 = rows["plain"]["max_ctx_per_seq_alone"]["16"]
    assert 0 < rows["drafted"]["max_ctx_per_seq_alone"]["16"] < alone_16 < 8192
    assert rows["missing"]["error"] == f"draft model: file not found: {MODELS / 'nothing.gguf'}"


def test_openmp_settings_reach_the_model_process_environment() -> None:
    settings = Settings.model_validate(
        {
            "models_dir": str(MODELS),
            "engine": {"omp_spin_count": 2500},
            "models": {"m": {"path": SMOL}},
        }
    )
    options = engine_options(settings, settings.models["m"], MODELS / SMOL)
    assert (options.omp_wait_policy, options.omp_spin_count) == ("passive", 2500)
    inherited = {"PATH": "/bin", "GOMP_SPINCOUNT": "7", "OMP_WAIT_POLICY": "ACTIVE"}
    env = omp_env(inherited, "passive", 2500)
    assert env == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "2500"}
    # Active keeps libgomp's own spin (minutes): an inherited count would cut it short.
    assert omp_env(inherited, "active", 2500) == {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE"}
    assert Settings().engine.omp_spin_count == 10_000
