"""Run the daemon: listen, start the models, serve until SIGTERM/SIGINT, then stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from llmd import __version__
from llmd.auth.setup import reload_keys
from llmd.models import ModelManager
from llmd.server.accounting import access_log
from llmd.server.app import create_app
from llmd.settings import Settings
from llmd.usage.recorder import AUDIT

log = logging.getLogger("llmd")


async def serve(settings: Settings) -> None:
    manager = ModelManager(settings)
    app = create_app(settings, manager, observers=[access_log])
    audit = app[AUDIT]
    # Loads, swaps and unloads the daemon does by itself (a file changed, keep-alive ran out,
    # room was needed) are audited too; admin requests are audited by their handlers.
    manager.listeners.append(
        lambda name, event, why: audit.record(
            "llmd", f"model.{event}", name, None, {"why": why} if why else None
        )
    )
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that hangs up cancels its handler: frees the slot
        shutdown_timeout=settings.server.shutdown_timeout_s,
        access_log=None,  # accounting.access_log writes one richer line per request instead
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, reuse_address=True)
    # Listen before the models load: /health answers at once, /ready says when we can serve.
    await site.start()
    log.info(
        "llmd %s listening on http://%s:%d", __version__, settings.server.host, settings.server.port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(reload_keys(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    starting = asyncio.create_task(manager.start())
    await stop.wait()
    log.info(
        "stopping: finishing in-flight requests (up to %.0f s)", settings.server.shutdown_timeout_s
    )
    starting.cancel()
    # cleanup() closes the listener, waits for running handlers up to shutdown_timeout, then
    # cancels the rest; the models stay up until then so those requests can finish.
    await runner.cleanup()
    await manager.stop()
    log.info("stopped")


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
