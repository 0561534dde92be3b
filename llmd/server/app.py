"""The aiohttp application: routes (thin) and the error middleware."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from llmd.auth.middleware import METRICS_PATH, PUBLIC_PATHS, may_use_model
from llmd.auth.setup import install_auth
from llmd.body import PARSER, read_request
from llmd.cache import CACHE, ResponseCache
from llmd.console import add_routes as add_console_routes
from llmd.errors import (
    APIError,
    InvalidRequest,
    ModelNotFound,
    anthropic_error,
    error_body,
    is_anthropic,
)
from llmd.metrics import Metrics
from llmd.models import ModelManager
from llmd.parser_process import ParserProcess
from llmd.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_card
from llmd.protocol.anthropic import CountTokensRequest, MessagesRequest
from llmd.protocol.anthropic_models import (
    ANTHROPIC_VERSION,
    anthropic_model_info,
    anthropic_models_page,
)
from llmd.protocol.responses import ResponsesRequest
from llmd.record import FINISHERS, OBSERVERS, Observer, get_record
from llmd.server import activity, admin, cache_admin, health, stored_responses
from llmd.server.accounting import on_prepare, record_middleware
from llmd.serving import Serving
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from llmd.usage.setup import install_usage, open_usage

log = logging.getLogger("llmd.api")

SETTINGS = web.AppKey("settings", SettingsProvider)
"""The settings now, `app[SETTINGS].current`: a reload replaces them."""
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
    """Every error leaves in OpenAI's shape (Anthropic's on its routes); nothing a client
    sends can cause a 500."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except APIError as exc:
        get_record(request).error_code = exc.code or exc.type
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return _error(request, exc.status, exc.body(), exc.message, exc.param, exc.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"No route for {request.path}"
        body = error_body(message, _STATUS_TYPES.get(exc.status, "server_error"))
        return _error(request, exc.status, body, message)
    except (ConnectionResetError, OSError) as exc:
        log.info("%s %s: client went away (%s)", request.method, request.path, exc)
        raise
    except RecursionError:
        # A body nested just under the JSON decoder's limit parses, and a later walk over it
        # (a schema's conversion, json.dumps of a tool's input) runs a few frames deeper.
        message = "The request nests arrays or objects too deeply."
        error = InvalidRequest(message)
        get_record(request).error_code = error.type
        return _error(request, 400, error.body(), message)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        message = "The server had an error while processing your request."
        return _error(request, 500, error_body(message, "server_error"), message)


def _error(
    request: web.Request,
    status: int,
    body: dict[str, Any],
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The error response: OpenAI's `body`, or on Anthropic's routes Anthropic's shape."""
    if is_anthropic(request.path, ANTHROPIC_VERSION in request.headers):
        status, body = anthropic_error(status, message, param, get_record(request).request_id)
    return web.json_response(body, status=status, headers=headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, ChatCompletionRequest.parse)
    return await request.app[SERVING].chat.serve(request, req, request.app[MODELS])


async def messages(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, MessagesRequest.parse)
    return await request.app[SERVING].messages.serve(request, req, request.app[MODELS])


async def count_tokens(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, CountTokensRequest.parse)
    return await request.app[SERVING].count_tokens.serve(request, req, request.app[MODELS])


async def completions(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, CompletionRequest.parse)
    return await request.app[SERVING].completions.serve(request, req, request.app[MODELS])


async def create_embeddings(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, EmbeddingRequest.parse)
    return await request.app[SERVING].embeddings.serve(request, req, request.app[MODELS])


async def create_response(request: web.Request) -> web.StreamResponse:
    req = await read_request(request, ResponsesRequest.parse)
    return await request.app[SERVING].responses.serve(request, req, request.app[MODELS])


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
    """OpenAI's list; Anthropic's page when Anthropic's SDK asks (`client.models.list()`)."""
    cards = _cards(request)
    if ANTHROPIC_VERSION in request.headers:
        return web.json_response(anthropic_models_page(cards, request.query))
    return web.json_response({"object": "list", "data": cards})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for card in _cards(request):
        if card["id"] == name:
            if ANTHROPIC_VERSION in request.headers:
                return web.json_response(anthropic_model_info(card))
            return web.json_response(card)
    raise ModelNotFound(name)


def create_app(
    settings: Settings | SettingsProvider,
    manager: ModelManager,
    observers: list[Observer] | None = None,
) -> web.Application:
    """The app for `manager`'s models. `settings`: the daemon's provider, which reloads notify,
    or fixed settings (tests, benchmarks)."""
    provider = settings if isinstance(settings, SettingsProvider) else SettingsProvider(settings)
    current = provider.current
    # record_middleware is outermost so it sees the final status of every response, errors
    # included; observers (metrics, usage, access log) get the record when a request ends.
    app = web.Application(
        middlewares=[record_middleware, error_middleware], client_max_size=32 * 1024 * 1024
    )
    app.on_response_prepare.append(on_prepare)
    app[OBSERVERS] = list(observers or [])
    app[FINISHERS] = []
    app[SETTINGS] = provider
    app[MODELS] = manager
    app[CACHE] = cache = ResponseCache(provider)
    cache.follow(manager)
    app[SERVING] = Serving(provider, cache)  # serving and metrics read provider.current each time

    app[PARSER] = parser = ParserProcess()  # large bodies parsed off the event loop

    async def close_parts(_app: web.Application) -> None:
        await cache.close()
        await parser.close()

    app.on_cleanup.append(close_parts)
    app[STARTED] = time.monotonic()
    if current.metrics.enabled:
        metrics = Metrics(provider, manager, cache)
        app[METRICS] = metrics
        app[OBSERVERS].append(metrics.observe)
        app.router.add_get(METRICS_PATH, metrics.handle)

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_post("/v1/embeddings", create_embeddings)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    stored_responses.add_routes(app)  # GET, DELETE /v1/responses/{id}, .../input_items
    health.add_routes(app, manager, app[STARTED])
    admin.add_routes(app, MODELS)
    cache_admin.add_routes(app)  # GET, DELETE /api/v1/cache
    activity.add_routes(app)  # GET /api/v1/activity: the last hour by minute, for the console
    # Auth and usage, side by side. Auth goes first: its middleware runs after
    # error_middleware, its rate-limit headers are set before the usage hook waits for the
    # record's commit, and it reads the month's totals before the usage writer starts.
    usage = open_usage(current)
    # /metrics is not public: once keys are in force, it needs a key (the auth middleware).
    install_auth(app, provider, usage.store, usage.audit)
    if current.console.enabled:
        # /, /ui/: public files, their data from the API; /ui/session: the sign-in, whose
        # sessions the auth middleware takes (so after install_auth, before the usage paths).
        add_console_routes(app)
    install_usage(app, usage, skip_paths={*app[PUBLIC_PATHS], METRICS_PATH})  # no usage rows
    return app
