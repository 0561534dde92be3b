"""The response cache's admin API under /api/v1/cache (admin keys, as every /api/v1 path):

- `GET /api/v1/cache`: its numbers (`ResponseCache.stats`: backend and its health, entries,
  bytes against the bound, hits, misses, bypasses, errors...).
- `DELETE /api/v1/cache`: every entry; `?key=NAME` one API key's own entries, `?shared=true`
  the shared scope's. Answers `{"deleted": N}`, and writes an audit entry `cache.cleared`
  (its target the scope, `*` for all). A backend that fails is a 503 saying why: the entries
  may still be there.

Any other query parameter is refused (400): a misspelt `?keys=alice` must not delete every
entry.
"""

from __future__ import annotations

from aiohttp import web

from llmd.cache import CACHE, SHARED, key_scope
from llmd.cache.forget import CLEARED
from llmd.errors import InvalidRequest, ServiceUnavailable
from llmd.usage.recorder import AUDIT

PARAMETERS = ("key", "shared")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CACHE].stats())


def _which(request: web.Request) -> tuple[str | None, bool]:
    """(key name, shared) from the query: at most one of them; neither: every entry."""
    query = request.query
    for name in query:
        if name not in PARAMETERS:
            raise InvalidRequest(
                f"Unknown parameter '{name}': use key=NAME or shared=true (or neither: every "
                "entry).",
                param=name,
            )
        if len(query.getall(name)) > 1:
            raise InvalidRequest(f"'{name}' is given more than once.", param=name)
    key = query.get("key")
    if key is not None and not key:
        raise InvalidRequest("'key' must name an API key.", param="key")
    shared = query.get("shared", "false")
    if shared not in ("true", "false"):
        raise InvalidRequest(
            f"Invalid 'shared': use true or false, not {shared!r}.", param="shared"
        )
    if key is not None and shared == "true":
        raise InvalidRequest("Give key=NAME or shared=true, not both.", param="shared")
    return key, shared == "true"


async def clear(request: web.Request) -> web.Response:
    key, shared = _which(request)
    try:
        deleted = await request.app[CACHE].clear(key_name=key, shared=shared)
    except RuntimeError as exc:
        raise ServiceUnavailable(
            f"The cache could not be cleared: {exc}.", code="cache_unavailable", retry_after=5
        ) from None
    target = SHARED if shared else key_scope(key) if key is not None else "*"
    audit = request.app.get(AUDIT)
    if audit is not None:
        audit.record_request(request, CLEARED, target, {"deleted": deleted})
    return web.json_response({"deleted": deleted})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/cache", stats)
    app.router.add_delete("/api/v1/cache", clear)
