"""The aiohttp application: routes (thin) and the error middleware."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llmd.auth.middleware import PUBLIC_PATHS, authorize_model, may_use_model
from llmd.auth.setup import install_security
from llmd.errors import APIError, InvalidRequest, ModelNotFound, error_body
from llmd.metrics import Metrics
from llmd.models import Model, ModelManager
from llmd.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_card
from llmd.server import admin, health
from llmd.server.accounting import (
    FINISHERS,
    OBSERVERS,
    Observer,
    get_record,
    on_prepare,
    record_middleware,
)
from llmd.server.serving import Serving
from llmd.settings import Settings

log = logging.getLogger("llmd.api")

SETTINGS = web.AppKey("settings", Settings)
MODELS = web.AppKey("models", ModelManager)
SERVING = web.AppKey("serving", Serving)
STARTED = web.AppKey("started", float)
METRICS = web.AppKey("metrics", Metrics)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in OpenAI's shape; nothing a client sends can cause a 500."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except APIError as exc:
        get_record(request).error_code = exc.code or exc.type
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"No route for {request.path}"
        return web.json_response(
            error_body(message, _STATUS_TYPES.get(exc.status, "server_error")),
            status=exc.status,
        )
    except (ConnectionResetError, OSError) as exc:
        log.info("%s %s: client went away (%s)", request.method, request.path, exc)
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return web.json_response(
            error_body("The server had an error while processing your request.", "server_error"),
            status=500,
        )


async def _json(request: web.Request) -> Any:
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno})."
        ) from None


async def _with_model(
    request: web.Request,
    req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    serve: Callable[[Model], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Check the key may use the request's model; hold the model (loaded first if need be)
    until the response's last byte, serving the request with it."""
    manager = request.app[MODELS]
    entry = manager.resolve(req.model)
    authorize_model(request, entry.name, entry.settings.aliases)
    async with manager.use(req.model, req.keep_alive_s()) as model:
        return await serve(model)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = ChatCompletionRequest.parse(await _json(request))
    serving, record = request.app[SERVING], get_record(request)
    return await _with_model(request, req, lambda m: serving.chat(request, req, m, record))


async def completions(request: web.Request) -> web.StreamResponse:
    req = CompletionRequest.parse(await _json(request))
    serving, record = request.app[SERVING], get_record(request)
    return await _with_model(request, req, lambda m: serving.completions(request, req, m, record))


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    req = EmbeddingRequest.parse(await _json(request))
    serving, record = request.app[SERVING], get_record(request)
    return await _with_model(request, req, lambda m: serving.embeddings(req, m, record))


def _cards(request: web.Request) -> list[dict[str, Any]]:
    """Every servable model and alias the request's key may use (all of them without keys).

    Files still being copied and failed ones are not listed (see /api/v1/models)."""
    manager = request.app[MODELS]
    cards = []
    for alias, name in manager.names.items():
        entry = manager.entries[name]
        if entry.file is None or entry.removed:
            continue
        if not may_use_model(request, name, entry.settings.aliases):
            continue
        created = entry.file_key[0][1] // 1_000_000_000 if entry.file_key else 0
        cards.append(model_card(alias, created, entry.state()))
    return cards


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _cards(request)})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for card in _cards(request):
        if card["id"] == name:
            return web.json_response(card)
    raise ModelNotFound(name)


def create_app(
    settings: Settings, manager: ModelManager, observers: list[Observer] | None = None
) -> web.Application:
    # record_middleware is outermost so it sees the final status of every response, errors
    # included; observers (metrics, usage, access log) get the record when a request ends.
    app = web.Application(
        middlewares=[record_middleware, error_middleware], client_max_size=32 * 1024 * 1024
    )
    app.on_response_prepare.append(on_prepare)
    app[OBSERVERS] = list(observers or [])
    app[FINISHERS] = []
    app[SETTINGS] = settings
    app[MODELS] = manager
    app[SERVING] = Serving(settings)
    app[STARTED] = time.monotonic()
    if settings.metrics.enabled:
        metrics = Metrics(settings, manager)
        app[METRICS] = metrics
        app[OBSERVERS].append(metrics.observe)
        app.router.add_get("/metrics", metrics.handle)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", create_embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    health.add_routes(app, manager, app[STARTED])
    admin.add_routes(app, MODELS)
    # Keys, limits, usage and audit: its middleware goes after error_middleware.
    install_security(app, settings)
    if settings.metrics.enabled and settings.metrics.access != "key":
        app[PUBLIC_PATHS].add("/metrics")  # scraped without a key; metrics.access decides
    return app
