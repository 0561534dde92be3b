"""The admin API for keys: /api/v1/keys (admin keys only; the middleware checks that)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from llmd.auth import keys as k
from llmd.auth.middleware import AUTH
from llmd.body import read_json
from llmd.cache import CACHE, key_scope
from llmd.cache.forget import CLEARED, forget_key
from llmd.errors import APIError, InvalidRequest
from llmd.usage.recorder import AUDIT
from llmd.usage.responses import RESPONSE_STORE

TOML_INT = 2**63 - 1
"""The largest integer the keys file (TOML) can hold."""


def _text(value: str) -> str:
    """Text the keys file (UTF-8) can hold: JSON lets a lone surrogate ("\\ud800") through."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be text (a lone surrogate is not)") from None
    return value


Text = Annotated[str, AfterValidator(_text)]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text
    admin: bool = False
    metrics: bool = False
    models: list[Text] | None = None
    rpm: int | None = Field(None, ge=1, le=TOML_INT)
    tpm: int | None = Field(None, ge=1, le=TOML_INT)
    concurrency: int | None = Field(None, ge=1, le=TOML_INT)
    monthly_tokens: int | None = Field(None, ge=1, le=TOML_INT)
    weight: int = Field(1, ge=1, le=1000)
    log_content: bool = False
    expires: dt.date | dt.datetime | None = None
    description: Text = ""


def _not_found(name: str) -> APIError:
    return APIError(f"No key named '{name}'.", code="key_not_found", status=404)


async def list_keys(request: web.Request) -> web.Response:
    registry = request.app[AUTH].registry
    data = [k.describe(name, rec) for name, rec in registry.keys.items()]
    return web.json_response({"object": "list", "data": data})


async def get_key(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rec = request.app[AUTH].registry.keys.get(name)
    if rec is None:
        raise _not_found(name)
    out = k.describe(name, rec)
    out["month_tokens"] = request.app[AUTH].limiter.month_tokens(name)
    return web.json_response(out)


async def add_key(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    try:
        new = NewKey.model_validate(
            await read_json(request, not_json="The request body is not valid JSON.")
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidRequest(f"Invalid value for '{param}': {err['msg']}", param=param) from None
    fields = new.model_dump(exclude={"name"})
    try:
        rec, secret = await asyncio.to_thread(k.add_key, auth.registry.path, new.name, **fields)
    except k.KeyError_ as exc:
        status = 409 if "exists" in str(exc) else 400
        raise APIError(str(exc), code="invalid_key", status=status) from None
    await auth.registry.reload(quiet=True)
    request.app[AUDIT].record_request(request, "key.added", new.name, {"admin": new.admin})
    return web.json_response({**k.describe(new.name, rec), "secret": secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    name = request.match_info["name"]
    try:
        rec = await asyncio.to_thread(k.revoke_key, auth.registry.path, name)
    except k.KeyError_:
        raise _not_found(name) from None
    await auth.registry.reload(quiet=True)
    # A revoked key's stored Responses go with it (docs/responses.md).
    stored = request.app.get(RESPONSE_STORE)
    forgotten = await stored.forget_key(name) if stored is not None else 0
    request.app[AUDIT].record_request(request, "key.revoked", name, {"responses": forgotten})
    # And its cached answers (llmd/cache/forget.py), as when the keys file is edited.
    detail = await forget_key(request.app.get(CACHE), name)
    request.app[AUDIT].record_request(
        request, CLEARED, key_scope(name), {**detail, "reason": "key.revoked"}
    )
    return web.json_response(k.describe(name, rec))


async def rotate_key(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    name = request.match_info["name"]
    try:
        rec, secret = await asyncio.to_thread(k.rotate_key, auth.registry.path, name)
    except k.KeyError_:
        raise _not_found(name) from None
    await auth.registry.reload(quiet=True)
    request.app[AUDIT].record_request(request, "key.rotated", name)
    return web.json_response({**k.describe(name, rec), "secret": secret})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/keys", list_keys)
    app.router.add_post("/api/v1/keys", add_key)
    app.router.add_get("/api/v1/keys/{name}", get_key)
    app.router.add_delete("/api/v1/keys/{name}", revoke_key)
    app.router.add_post("/api/v1/keys/{name}/revoke", revoke_key)
    app.router.add_post("/api/v1/keys/{name}/rotate", rotate_key)
