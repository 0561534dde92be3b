"""Wire keys, limits, the auth middleware and the keys API into the aiohttp app.

Usage records and the audit log are wired beside it (llmd/usage/setup.py); auth is handed the
usage store (month totals for quotas, refusing requests it cannot record) and the audit log
(key file reloads) explicitly.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from aiohttp import web

from llmd.auth import api as keys_api
from llmd.auth import middleware as mw
from llmd.auth.limits import Limiter, month_start
from llmd.auth.registry import KeyRegistry
from llmd.cache import CACHE, key_scope
from llmd.cache.forget import CLEARED, forget_key
from llmd.settings_provider import SettingsProvider
from llmd.usage.recorder import Audit
from llmd.usage.responses import RESPONSE_STORE
from llmd.usage.store import UsageStore, totals_since

log = logging.getLogger("llmd.auth")

PUBLIC = {"/health", "/ready"}


def install_auth(
    app: web.Application,
    provider: SettingsProvider,
    store: UsageStore | None,
    audit: Audit,
    clock: Callable[[], float] = time.time,
) -> None:
    """Call before the app starts: adds the middleware (after the ones already there), the
    rate-limit headers, the keys API, and start-up/clean-up of the keys file's watcher."""
    registry = KeyRegistry(
        provider.current.auth.keys_file,
        clock=lambda: dt.datetime.fromtimestamp(clock(), dt.UTC),
    )
    auth = mw.Auth(provider, registry, Limiter(clock), store)
    app[mw.AUTH] = auth
    app.setdefault(mw.PUBLIC_PATHS, set()).update(PUBLIC)
    app.middlewares.append(mw.auth_middleware)
    app.on_response_prepare.append(mw.on_prepare)
    registry.on_reload.append(
        lambda changed: audit.record("system", "keys.reloaded", ",".join(changed), None)
    )

    async def forget(names: list[str]) -> None:
        """A key revoked or deleted in the file (`llmd keys revoke`, an edit) loses its
        cached answers and stored Responses, as through the admin API (llmd/auth/api.py):
        `llmd keys revoke` deleted the stored ones from the database, but not those a
        daemon without a usage database holds in memory."""
        stored = app.get(RESPONSE_STORE)
        for name in names:
            if stored is not None:
                await stored.forget_key(name)
            detail = await forget_key(app.get(CACHE), name)
            audit.record(
                "system", CLEARED, key_scope(name), None, {**detail, "reason": "keys.reloaded"}
            )

    registry.on_gone.append(forget)
    keys_api.add_routes(app)

    async def startup(app: web.Application) -> None:
        registry.load(quiet=True)
        if registry.error is not None:
            log.error("starting with no keys from %s", registry.path)
        registry.start_watching()
        auth.start_warnings()
        if store is not None:
            # Read before the usage writer starts (its start-up hook comes after this one).
            month = month_start(clock())
            try:
                hits = provider.current.cache.count_hit_tokens
                auth.limiter.set_month_totals(totals_since(store.path, month, hits), month)
            except Exception as exc:  # noqa: BLE001 - an unreadable database is reported below
                log.error("usage database %s unreadable at start: %s", store.path, exc)

    async def cleanup(app: web.Application) -> None:
        await registry.stop()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)


async def reload_keys(app: web.Application) -> None:
    """SIGHUP: read the keys file again (the coordinator's config reload may call this)."""
    await app[mw.AUTH].registry.reload()
