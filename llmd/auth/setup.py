"""Wire keys, limits, usage records and the audit log into the aiohttp app."""

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
from llmd.record import FINISHERS, OBSERVERS
from llmd.settings import Settings
from llmd.usage import api as usage_api
from llmd.usage.recorder import AUDIT, Audit, UsageRecorder
from llmd.usage.store import UsageStore, totals_since

log = logging.getLogger("llmd.auth")

PUBLIC = {"/health", "/ready"}


def install_security(
    app: web.Application, settings: Settings, clock: Callable[[], float] = time.time
) -> None:
    """Call before the app starts: adds the middleware (after the ones already there), the
    observers, the admin routes, and start-up/clean-up of the keys watcher and the writer."""
    store: UsageStore | None = None
    if settings.usage.enabled:
        assert settings.usage.database is not None  # load_settings resolves the default
        store = UsageStore(
            settings.usage.database,
            buffer_max=settings.usage.buffer_max,
            retention_days=settings.usage.content_retention_days,
            clock=clock,
        )
        app[usage_api.DATABASE] = settings.usage.database
    registry = KeyRegistry(
        settings.auth.keys_file, clock=lambda: dt.datetime.fromtimestamp(clock(), dt.UTC)
    )
    auth = mw.Auth(settings, registry, Limiter(clock), store)
    audit = Audit(store)
    app[mw.AUTH] = auth
    app[AUDIT] = audit
    app.setdefault(mw.PUBLIC_PATHS, set()).update(PUBLIC)
    app.middlewares.append(mw.auth_middleware)
    app.on_response_prepare.append(mw.on_prepare)
    registry.on_reload.append(
        lambda changed: audit.record("system", "keys.reloaded", ",".join(changed), None)
    )
    if store is not None:
        recorder = UsageRecorder(store, app[mw.PUBLIC_PATHS])
        app[OBSERVERS].append(recorder.observe)
        app.setdefault(FINISHERS, []).append(recorder.finish)
        app.on_response_prepare.append(recorder.on_prepare)
    keys_api.add_routes(app)
    usage_api.add_routes(app)

    async def startup(app: web.Application) -> None:
        registry.load(quiet=True)
        if registry.error is not None:
            log.error("starting with no keys from %s", registry.path)
        registry.start_watching()
        auth.start_warnings()
        if store is not None:
            month = month_start(clock())
            try:
                auth.limiter.set_month_totals(totals_since(store.path, month), month)
            except Exception as exc:  # noqa: BLE001 - an unreadable database is reported below
                log.error("usage database %s unreadable at start: %s", store.path, exc)
            store.start()

    async def cleanup(app: web.Application) -> None:
        await registry.stop()
        if store is not None:
            store.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)


async def reload_keys(app: web.Application) -> None:
    """SIGHUP: read the keys file again (the coordinator's config reload may call this)."""
    await app[mw.AUTH].registry.reload()
