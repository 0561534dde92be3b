"""The model admin API under /api/v1/models: list, plan, load, unload, reload, pin,
keep-alive. Handlers are thin: the work is ModelManager's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llmd.body import read_json
from llmd.errors import InvalidRequest
from llmd.models import ModelManager
from llmd.settings import parse_duration
from llmd.usage.recorder import AUDIT


def _manager(request: web.Request) -> ModelManager:
    return request.app[request.app[_KEY]]  # type: ignore[no-any-return]


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, empty={})
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


async def list_models(request: web.Request) -> web.Response:
    manager = _manager(request)
    return web.json_response(
        {
            "object": "list",
            "memory": manager.memory_report(),
            "models": [manager.describe(e) for e in manager.entries.values()],
        }
    )


async def plan(request: web.Request) -> web.Response:
    return web.json_response(_manager(request).plan())


async def get_model(request: web.Request) -> web.Response:
    manager = _manager(request)
    return web.json_response(manager.describe(manager.resolve(request.match_info["name"])))


async def load(request: web.Request) -> web.Response:
    manager = _manager(request)
    name = request.match_info["name"]
    keep_alive = _keep_alive(await _body(request))
    entry = manager.resolve(name)
    if keep_alive != "default":
        entry.keep_alive = keep_alive
    _audit(request, "load_requested", entry.name)
    await manager.load(name)
    return web.json_response(manager.describe(entry))


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
    return web.json_response(manager.describe(entry))


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
    return web.json_response(manager.describe(entry))


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
    return web.json_response(manager.describe(entry))


_KEY: web.AppKey[Any] = web.AppKey("models_key", object)


def add_routes(app: web.Application, key: web.AppKey[ModelManager]) -> None:
    app[_KEY] = key
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/models/plan", plan)
    for action, handler in (
        ("load", load),
        ("unload", unload),
        ("reload", reload),
        ("pin", pin),
        ("keep_alive", keep_alive),
    ):
        app.router.add_post(f"/api/v1/models/{{name:.+}}/{action}", handler)
    app.router.add_get("/api/v1/models/{name:.+}", get_model)
