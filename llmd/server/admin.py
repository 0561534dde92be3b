"""The model admin API under /api/v1/models: list, plan, load, unload, reload, pin,
keep-alive. Handlers are thin: the work is ModelManager's, and a model's answer renders its
status view (`llmd.models.status`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llmd.body import read_json
from llmd.errors import InvalidRequest
from llmd.models import Entry, ModelManager
from llmd.models.status import MemoryStatus, ModelStatus, memory_status, model_status, plan
from llmd.units import parse_duration
from llmd.usage.recorder import AUDIT


def _manager(request: web.Request) -> ModelManager:
    return request.app[request.app[_KEY]]  # type: ignore[no-any-return]


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, empty={}, with_position=False)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _audit(request: web.Request, action: str, name: str, **detail: Any) -> None:
    """Who asked for what, from where: the audit log's record of an admin action."""
    audit = request.app.get(AUDIT)
    if audit is not None:
        audit.record_request(request, f"model.{action}", name, detail or None)


def _keep_alive(body: dict[str, Any]) -> float | None | str:
    if "keep_alive" not in body:
        return "default"
    value = body["keep_alive"]
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidRequest(
            "keep_alive must be seconds or a duration like '5m'", param="keep_alive"
        )
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="keep_alive") from None


def describe(s: ModelStatus) -> dict[str, Any]:
    """A model as the admin API shows it: its file, settings, current version and memory."""
    current = s.current
    est = s.estimate
    return {
        "name": s.name,
        "aliases": s.aliases,
        "source": s.source,
        "path": s.path,
        "state": s.state,
        "error": s.error,
        "pinned": s.pinned,
        "preload": s.preload,
        "keep_alive_s": -1 if s.keep_alive_s is None else s.keep_alive_s,
        "expires_in_s": current.expires_in_s if current else None,
        "pid": current.pid if current else None,
        "file_size_bytes": s.file_size_bytes,
        "quantization": s.quantization,
        "architecture": s.architecture,
        "parameters": s.parameters,
        "context_length": s.context_length,
        "ctx_per_seq": s.ctx_per_seq,
        "parallel": s.parallel,
        "memory": {
            "estimated_bytes": est.total if est else None,
            "weights_bytes": est.weights if est else None,
            "kv_cache_bytes": est.kv_cache if est else None,
            "other_bytes": est.compute if est else None,
            "corrected_estimate_bytes": s.corrected_estimate_bytes,
            "measured_bytes": (current.peak_rss_bytes or None) if current else None,
        },
        "requests_in_flight": sum(v.requests_held for v in s.versions),
        "running": current.running if current else 0,
        "queued": current.waiting if current else 0,
        "draining": len(s.others),
        "loaded_at": current.loaded_at if current else None,
    }


def memory(m: MemoryStatus) -> dict[str, Any]:
    return {
        "budget_bytes": m.budget_bytes,
        "used_bytes": m.used_bytes,
        "reserve_bytes": m.reserve_bytes,
        "system_total_bytes": m.system_total_bytes,
        "system_available_bytes": m.system_available_bytes,
    }


def _answer(manager: ModelManager, entry: Entry) -> web.Response:
    return web.json_response(describe(model_status(manager, entry)))


async def list_models(request: web.Request) -> web.Response:
    manager = _manager(request)
    return web.json_response(
        {
            "object": "list",
            "memory": memory(memory_status(manager)),
            "models": [describe(model_status(manager, e)) for e in manager.entries.values()],
        }
    )


async def get_plan(request: web.Request) -> web.Response:
    return web.json_response(plan(_manager(request)))


async def get_model(request: web.Request) -> web.Response:
    manager = _manager(request)
    return _answer(manager, manager.resolve(request.match_info["name"]))


async def load(request: web.Request) -> web.Response:
    manager = _manager(request)
    name = request.match_info["name"]
    keep_alive = _keep_alive(await _body(request))
    entry = manager.resolve(name)
    if keep_alive != "default":
        entry.keep_alive = keep_alive
    _audit(request, "load_requested", entry.name)
    await manager.load(name)
    return _answer(manager, entry)


async def unload(request: web.Request) -> web.Response:
    return await _carry_out(request, "unload_requested", ModelManager.unload)


async def reload(request: web.Request) -> web.Response:
    return await _carry_out(request, "reload_requested", ModelManager.reload)


async def _carry_out(
    request: web.Request, action: str, run: Callable[[ModelManager, str], Awaitable[object]]
) -> web.Response:
    """Audit an operator's request for the named model, carry it out, answer its state."""
    manager = _manager(request)
    entry = manager.resolve(request.match_info["name"])
    _audit(request, action, entry.name)
    await run(manager, entry.name)
    return _answer(manager, entry)


async def pin(request: web.Request) -> web.Response:
    manager = _manager(request)
    body = await _body(request)
    pinned = body.get("pinned", True)
    if not isinstance(pinned, bool):
        raise InvalidRequest("pinned must be true or false", param="pinned")
    entry = manager.resolve(request.match_info["name"])
    _audit(request, "pin", entry.name, pinned=pinned)
    entry.pinned = pinned
    if pinned:
        model = await manager.load(entry.name)  # a pinned model is loaded and stays
        model.expires = None
    elif entry.current is not None:
        manager.touch(entry)
    return _answer(manager, entry)


async def keep_alive(request: web.Request) -> web.Response:
    manager = _manager(request)
    body = await _body(request)
    if "keep_alive" not in body:
        raise InvalidRequest("keep_alive is required", param="keep_alive")
    entry = manager.resolve(request.match_info["name"])
    entry.keep_alive = _keep_alive(body)
    _audit(request, "keep_alive", entry.name, keep_alive=entry.keep_alive)
    if entry.current is not None:
        manager.touch(entry)
    return _answer(manager, entry)


_KEY: web.AppKey[Any] = web.AppKey("models_key", object)


def add_routes(app: web.Application, key: web.AppKey[ModelManager]) -> None:
    app[_KEY] = key
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/models/plan", get_plan)
    for action, handler in (
        ("load", load),
        ("unload", unload),
        ("reload", reload),
        ("pin", pin),
        ("keep_alive", keep_alive),
    ):
        app.router.add_post(f"/api/v1/models/{{name:.+}}/{action}", handler)
    app.router.add_get("/api/v1/models/{name:.+}", get_model)
