"""`llmd models plan`: which models fit together in the memory budget, and at what context
and concurrency, computed from GGUF metadata before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmd.gguf import GGUFError, ModelFile, estimate, read_model, read_model_cached
from llmd.settings import ModelSettings, Settings

PARALLEL_CHOICES = (1, 2, 4, 8, 16)


@dataclass
class PlanInput:
    name: str
    settings: ModelSettings
    file: ModelFile | None
    error: str | None
    pinned: bool = False
    preload: bool = False


def _max_ctx(
    file: ModelFile, draft: ModelFile | None, settings: Settings, parallel: int, room: int
) -> int:
    """Largest context per sequence (a multiple of 256, at most the trained one) in `room`."""
    engine = settings.engine
    ubatch = min(engine.ubatch_size, engine.batch_size)
    fixed = estimate(file, 0, parallel, ubatch, engine.kv_type, draft).total
    per_token = _kv_per_token(file, draft, engine.kv_type) * parallel
    if per_token <= 0 or room <= fixed:
        return 0
    ctx = (room - fixed) // per_token // 256 * 256
    trained = file.info.context_length
    return int(min(ctx, trained) if trained else ctx)


def _kv_per_token(file: ModelFile, draft: ModelFile | None, kv_type: str) -> int:
    """KV cache bytes a token of context costs, the draft model's cache included."""
    own = file.info.kv_bytes_per_token(kv_type)
    return own + (draft.info.kv_bytes_per_token(kv_type) if draft is not None else 0)


def _draft(settings: Settings, ms: ModelSettings) -> tuple[ModelFile | None, str | None]:
    """A model's draft file, read, or why it cannot be."""
    path = settings.draft_path(ms)
    if path is None:
        return None, None
    try:
        return read_model_cached(path), None
    except (GGUFError, OSError) as exc:
        return None, f"draft model: {exc}"


def make_plan(
    settings: Settings, models: list[PlanInput], budget: int, total: int, available: int
) -> dict[str, Any]:
    engine = settings.engine
    rows: list[dict[str, Any]] = []
    for m in models:
        draft, draft_error = _draft(settings, m.settings)
        if m.file is None or draft_error is not None:
            error = m.error or draft_error or "not a usable model file"
            rows.append({"name": m.name, "error": error})
            continue
        ctx = m.settings.ctx_per_seq or engine.ctx_per_seq
        parallel = m.settings.parallel or engine.parallel
        ubatch = min(engine.ubatch_size, engine.batch_size)
        est = estimate(m.file, ctx, parallel, ubatch, engine.kv_type, draft)
        rows.append(
            {
                "name": m.name,
                "error": None,
                "file_size_bytes": m.file.file_size,
                "quantization": m.file.info.quantization,
                "architecture": m.file.info.architecture,
                "parameters": m.file.parameters,
                "context_length": m.file.info.context_length,
                "ctx_per_seq": ctx,
                "parallel": parallel,
                "pinned": m.pinned,
                "preload": m.preload,
                "estimated_bytes": est.total,
                "weights_bytes": est.weights,
                "kv_cache_bytes": est.kv_cache,
                "other_bytes": est.compute,
                "kv_bytes_per_token": _kv_per_token(m.file, draft, engine.kv_type),
                "fits_alone": est.total <= budget,
                "max_ctx_per_seq_alone": {
                    str(p): _max_ctx(m.file, draft, settings, p, budget) for p in PARALLEL_CHOICES
                },
            }
        )
    usable = [r for r in rows if r["error"] is None]
    # Resident first what must be (pinned, preloaded), then the smallest: the most models.
    order = sorted(usable, key=lambda r: (not r["pinned"], not r["preload"], r["estimated_bytes"]))
    together: list[str] = []
    left_out: list[str] = []
    used = 0
    for r in order:
        if used + r["estimated_bytes"] <= budget:
            together.append(r["name"])
            used += r["estimated_bytes"]
        else:
            left_out.append(r["name"])
    return {
        "memory": {
            "system_total_bytes": total,
            "system_available_bytes": available,
            "budget_bytes": budget,
        },
        "models": rows,
        "together": {
            "all_fit": not left_out,
            "resident": together,
            "resident_bytes": used,
            "load_on_demand_by_eviction": left_out,
        },
    }


def render(plan: dict[str, Any]) -> str:
    """The plan as text for the terminal."""
    gib = 1024**3
    mem = plan["memory"]
    out = [
        f"memory: budget {mem['budget_bytes'] / gib:.2f} GiB of "
        f"{mem['system_total_bytes'] / gib:.1f} GiB RAM "
        f"({mem['system_available_bytes'] / gib:.1f} GiB available now)",
        "",
        f"{'model':32} {'quant':8} {'file':>9} {'ctx x par':>11} {'estimate':>9}  fits  "
        "max ctx/seq alone at parallel 1/2/4/8/16",
    ]
    for r in plan["models"]:
        if r["error"]:
            out.append(f"{r['name']:32} failed: {r['error']}")
            continue
        alone = "/".join(str(v) for v in r["max_ctx_per_seq_alone"].values())
        out.append(
            f"{r['name'][:32]:32} {r['quantization']:8} {r['file_size_bytes'] / 2**20:>6.0f} MiB "
            f"{r['ctx_per_seq']:>5} x {r['parallel']:<3} {r['estimated_bytes'] / 2**20:>5.0f} MiB"
            f"  {'yes ' if r['fits_alone'] else 'NO  '}  {alone}"
        )
    t = plan["together"]
    out.append("")
    if t["all_fit"]:
        out.append(
            f"all {len(t['resident'])} model(s) fit together: "
            f"{t['resident_bytes'] / 2**20:.0f} MiB of the budget"
        )
    else:
        out.append(
            f"together: {', '.join(t['resident']) or 'none'} "
            f"({t['resident_bytes'] / 2**20:.0f} MiB);"
            f" {', '.join(t['load_on_demand_by_eviction'])} load only by unloading idle ones"
        )
    return "\n".join(out)


def inputs_from_disk(settings: Settings) -> list[PlanInput]:
    """The models the daemon would know with these settings, read from disk (for the CLI)."""
    from llmd.watch import find_models

    out = []
    configured = {settings.model_path(n).resolve(): n for n in settings.models}
    for name, ms in settings.models.items():
        out.append(_read_input(name, ms, settings.model_path(name)))
    for cand in find_models(settings.models_dir):
        if cand.path.resolve() in configured:
            continue
        out.append(_read_input(cand.name, ModelSettings(path=cand.path, preload=False), cand.path))
    return out


def _read_input(name: str, ms: ModelSettings, path: Path) -> PlanInput:
    try:
        return PlanInput(name, ms, read_model(path), None, ms.pinned, ms.preload)
    except (GGUFError, OSError) as exc:
        return PlanInput(name, ms, None, str(exc), ms.pinned, ms.preload)
