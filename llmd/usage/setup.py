"""Wire usage records, the audit log and the usage API into the aiohttp app.

`open_usage` builds the store and the audit log without touching the app, so that auth (wired
beside usage, llmd/auth/setup.py) can be handed them; `install_usage` then adds the recorder's
hooks, the usage API and the writer's start-up and clean-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from llmd.record import FINISHERS, OBSERVERS
from llmd.settings import Settings
from llmd.usage import api as usage_api
from llmd.usage.recorder import AUDIT, Audit, UsageRecorder
from llmd.usage.responses import RESPONSE_STORE, ResponseStore
from llmd.usage.store import UsageStore


@dataclass
class Usage:
    """The usage database's writer (None when usage is off), the audit log over it and the
    stored Responses (in the database, or in memory when usage is off)."""

    store: UsageStore | None
    audit: Audit
    responses: ResponseStore


def open_usage(settings: Settings, clock: Callable[[], float] = time.time) -> Usage:
    """The store (not started yet: `install_usage` starts it with the app) and the audit log."""
    store: UsageStore | None = None
    if settings.usage.enabled:
        assert settings.usage.database is not None  # load_settings resolves the default
        store = UsageStore(
            settings.usage.database,
            buffer_max=settings.usage.buffer_max,
            retention_days=settings.usage.content_retention_days,
            responses_retention_days=settings.usage.responses_retention_days,
            clock=clock,
        )
    responses = ResponseStore(store, settings.usage.responses_retention_days, clock)
    return Usage(store, Audit(store), responses)


def install_usage(app: web.Application, usage: Usage, skip_paths: set[str]) -> None:
    """Call before the app starts: `app[AUDIT]`, `app[RESPONSE_STORE]`, the recorder (an
    observer, a finisher and a prepare hook; requests to `skip_paths` are not recorded), the
    usage API, and start-up and clean-up of the writer thread."""
    store = usage.store
    app[AUDIT] = usage.audit
    app[RESPONSE_STORE] = usage.responses
    if store is not None:
        app[usage_api.DATABASE] = store.path
        recorder = UsageRecorder(store, skip_paths)
        app[OBSERVERS].append(recorder.observe)
        app.setdefault(FINISHERS, []).append(recorder.finish)
        app.on_response_prepare.append(recorder.on_prepare)
    usage_api.add_routes(app)
    if store is None:
        return

    async def startup(app: web.Application) -> None:
        store.start()

    async def cleanup(app: web.Application) -> None:
        store.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
