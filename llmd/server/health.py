"""Health endpoints: /health (the process answers), /ready (the default model can take a
request now) and /api/v1/health (every model, the memory, the version, the watchdogs, the
llama.cpp CPU backend), rendered from the models' status view (`llmd.models.status`) and the
systemd notifier."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from llmd import __version__, cpu
from llmd.models import ModelManager
from llmd.models.status import MemoryStatus, ModelStatus, model_status, overview
from llmd.systemd import Notifier

NOTIFIER = web.AppKey("notifier", Notifier)
"""The daemon's systemd notifier, set by `llmd.daemon.serve` (absent in an app built by a test
or a benchmark: no systemd watchdog then)."""


class Health:
    """The health handlers of one app."""

    def __init__(self, manager: ModelManager, started: float) -> None:
        self.manager = manager
        self.started = started
        """time.monotonic() when the app was built (uptime_s counts from it)."""

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """200 when the default model can take a request now: loaded, and its queue not full."""
        manager = self.manager
        if manager.default is None:
            return web.json_response(
                {"status": "not ready", "reason": "no model configured"}, status=503
            )
        status = model_status(manager, manager.entries[manager.default])
        # An unloaded default model is ready: the first request loads it.
        if status.state not in ("ready", "unloaded") or not manager.started:
            reason = f"default model '{manager.default}' is {status.state}"
            if status.error:
                reason += f": {status.error}"
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        if status.saturated:
            reason = (
                f"default model '{manager.default}' is saturated: its {status.slots} slots and "
                f"queue of {status.queue_limit} are full"
            )
            return web.json_response(
                {"status": "not ready", "reason": reason}, status=503, headers={"Retry-After": "1"}
            )
        return web.json_response({"status": "ready", "model": manager.default})

    async def api_health(self, request: web.Request) -> web.Response:
        view = overview(self.manager)
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "default_model": view.default_model,
                "memory": _memory(view.memory),
                # The llama.cpp CPU backend variant this machine runs (null: not probed).
                "cpu_backend": _cpu(cpu.current()),
                "models": [_model(s) for s in view.models],
                "watchdog": watchdog(
                    request.app.get(NOTIFIER), self.manager.settings.engine.hang_timeout_s
                ),
            }
        )


def watchdog(notifier: Notifier | None, hang_timeout_s: float) -> dict[str, Any]:
    """Both watchdogs: systemd's over the daemon (when the unit asked for one: WatchdogSec=,
    seen as $WATCHDOG_USEC) and the daemon's over each model process (engine.hang_timeout_s)."""
    timeout = notifier.watchdog_timeout_s if notifier is not None else None
    last = notifier.last_ping if notifier is not None else None
    return {
        "enabled": timeout is not None,
        "timeout_s": timeout,
        "ping_interval_s": notifier.watchdog_interval_s if notifier is not None else None,
        # None before the first ping (and always without a watchdog).
        "since_ping_s": round(time.monotonic() - last, 3) if last is not None else None,
        "model_hang_timeout_s": hang_timeout_s,
    }


def _model(s: ModelStatus) -> dict[str, Any]:
    live = s.live
    return {
        "name": s.name,
        "aliases": s.aliases,
        "path": s.path,
        "state": s.state,
        # What new requests would meet: the current version's, not a draining one's.
        "error": (s.current.error if s.current else None) or s.error,
        "pid": live.pid,
        "restarts": live.restarts,
        "parallel": s.slots,
        # What the engine holds inputs to (less for an encoder-only model).
        "ctx_per_seq": s.engine_ctx_per_seq,
        "requests_in_flight": live.requests_in_flight,
        "running": live.running,
        "queued": live.waiting,
        "queue_limit": s.queue_limit,
        "saturated": s.saturated,
        "flash_attn": live.flash_attn or None,
        "batch_invariant": live.batch_invariant,
        "exact_steps": live.exact_steps or None,
        "kv_tokens_cached": live.kv_cells_used,
        "kv_tokens_total": live.kv_cells_total,
        "kv_usage": (
            round(live.kv_cells_used / live.kv_cells_total, 4) if live.kv_cells_total else 0.0
        ),
        "speculative": {
            "drafted_tokens": live.speculative_drafted,
            "accepted_tokens": live.speculative_accepted,
            "acceptance": (
                round(live.speculative_accepted / live.speculative_drafted, 4)
                if live.speculative_drafted
                else None
            ),
        },
        "memory_rss_bytes": live.rss_bytes,
        "memory_estimated_bytes": s.estimated_bytes,
        "model_bytes": s.current.model_bytes if s.current else None,
    }


def _cpu(backend: cpu.CpuBackend | None) -> dict[str, Any] | None:
    if backend is None:
        return None
    return {"variant": backend.variant, "features": backend.features}


def _memory(mem: MemoryStatus) -> dict[str, Any]:
    return {
        "daemon_rss_bytes": mem.daemon_rss_bytes,
        "system_total_bytes": mem.system_total_bytes,
        "system_available_bytes": mem.system_available_bytes,
        "budget_bytes": mem.budget_bytes,
        "used_bytes": mem.used_bytes,
    }


def add_routes(app: web.Application, manager: ModelManager, started: float) -> None:
    health = Health(manager, started)
    app.router.add_get("/health", health.health)
    app.router.add_get("/ready", health.ready)
    app.router.add_get("/api/v1/health", health.api_health)
