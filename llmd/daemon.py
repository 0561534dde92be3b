"""Run the daemon: listen, start the models, serve until SIGTERM/SIGINT, then stop cleanly.

SIGHUP re-reads the config file: a valid one is applied without dropping in-flight requests, an
invalid one is refused (file, line, reason in the log) and the running config stays. With
`server.tls_cert`/`tls_key` the listener speaks HTTPS, and SIGHUP reads the pair again too (new
connections get the new certificate; llmd/tls.py). Under systemd the daemon reports its life
cycle over sd_notify (llmd/systemd.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from llmd import __version__, cpu, logs
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from llmd.systemd import Notifier, keep_alive, status_line
from llmd.tls import RotatingContext, configured_pair

if TYPE_CHECKING:
    import ssl

    from aiohttp import web

    from llmd.models import ModelManager

log = logging.getLogger("llmd")

RELOAD_COALESCE_S = 0.2
"""After a SIGHUP, wait this long for more before reading the file: `systemctl reload` run in
a loop, or a storm of signals, becomes one reload of the file's latest content."""


ADDRESS_WAIT_S = 120.0
"""How long start-up waits for server.host to appear on an interface (a LAN address at boot,
before DHCP has answered), below the unit's TimeoutStartSec=300."""


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the operator reads in the journal."""


def models_dir_problem(settings: Settings) -> str | None:
    """Why the models directory cannot be used, or None.

    It must exist and be writable by the daemon's user: models are added there (copied in by
    the operator, or written by the daemon) and a read-only or missing directory is a broken
    install that should stop start-up, not surface later as a 404.
    """
    path = settings.models_dir
    if not path.exists():
        return f"models directory {path} does not exist (models_dir)"
    if not path.is_dir():
        return f"models directory {path} is not a directory (models_dir)"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"models directory {path} is not writable by this user (uid {os.getuid()})"
    return None


async def open_site(
    runner: web.BaseRunner, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> None:
    """Listen on host:port. A site that could not bind is taken off the runner again (it
    registers itself before binding), so the next attempt starts clean."""
    from aiohttp import web

    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await site.stop()
        raise


async def listen(
    start: Callable[[], Awaitable[None]],
    host: str,
    notifier: Notifier,
    wait_s: float = ADDRESS_WAIT_S,
    retry_s: float = 1.0,
) -> None:
    """`start()` the listener; while its address is not on any interface yet (at boot, a LAN
    address comes with DHCP or the link after network.target), retry for up to `wait_s`,
    saying so in the journal and in systemd's status line, and pinging the watchdog."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    said = False
    while True:
        try:
            await start()
            if said:
                log.info("address %s is up: listening", host)
            return
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or loop.time() >= deadline:
                raise
            if not said:
                log.warning(
                    "cannot listen on %s yet: no network interface has that address; "
                    "waiting up to %.0f s for it (server.host)",
                    host,
                    wait_s,
                )
                said = True
            notifier.status(f"waiting for address {host} (server.host)")
            notifier.watchdog()
        await asyncio.sleep(retry_s)


async def serve(provider: SettingsProvider) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the provider's config file."""
    # Imported here, not at the top: `llmd check-config` imports this module and should not
    # pay for the web server and llama.cpp.
    from llmd.auth.middleware import is_loopback
    from llmd.auth.setup import reload_keys
    from llmd.models import ModelManager
    from llmd.server.app import METRICS, create_app
    from llmd.server.health import NOTIFIER
    from llmd.server.wire import Runner, ServerLog
    from llmd.usage.recorder import AUDIT

    settings = provider.current
    notifier = Notifier()
    if problem := models_dir_problem(settings):
        raise StartupError(problem)
    # A pair that cannot be used stops start-up as a bad setting does (ConfigError: exit 2).
    first = configured_pair(settings, provider.path)
    tls = RotatingContext(first) if first is not None else None
    manager = ModelManager(settings)
    app = create_app(provider, manager, observers=[logs.access_log])
    app[NOTIFIER] = notifier  # /api/v1/health tells systemd's watchdog state
    audit = app[AUDIT]
    provider.subscribe(logs.reconfigure)  # level, format and log folder follow the file
    provider.subscribe(
        lambda _: audit.record("llmd", "config.reloaded", None, None, {"signal": "SIGHUP"})
    )
    # Loads, swaps and unloads the daemon does by itself (a file changed, keep-alive ran out,
    # room was needed) are audited too; admin requests are audited by their handlers.
    manager.listeners.append(
        lambda name, event, why: audit.record(
            "llmd", f"model.{event}", name, None, {"why": why} if why else None
        )
    )
    if METRICS in app:
        manager.listeners.append(app[METRICS].model_event)
    runner = Runner(  # what aiohttp cannot parse answered in the API's error shape
        app,
        handler_cancellation=True,  # a client that hangs up cancels its handler: frees the slot
        shutdown_timeout=settings.server.shutdown_timeout_s,
        access_log=None,  # logs.access_log writes one richer line per request instead
        logger=ServerLog(),  # a request aiohttp cannot parse: one line, no traceback
    )
    await runner.setup()
    host, port = settings.server.host, settings.server.port
    # Listen before the models load: /health answers at once, /ready says when we can serve.
    try:
        await listen(
            lambda: open_site(runner, host, port, tls.listening if tls else None), host, notifier
        )
    except OSError as exc:
        await runner.cleanup()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(
            f"cannot listen on {host}:{port}: {reason or exc} (server.host, server.port)"
        ) from None
    scheme = "https" if tls else "http"
    log.info("llmd %s listening on %s://%s:%d", __version__, scheme, host, port)
    if tls:
        log.info("TLS: serving %s", tls.serving)
    elif not is_loopback(host):
        log.warning(
            "listening on %s beyond loopback over plain HTTP: API keys, prompts and answers "
            "cross the network in clear text. Set server.tls_cert and server.tls_key (`llmd tls "
            "self-signed` writes a pair) or put a TLS proxy in front (docs/operations.md)",
            host,
        )
    # Signals from here on: a stop asked for while the probe below runs is a clean stop.
    stop = asyncio.Event()
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    # Which llama.cpp CPU backend this machine gets, in a child process: a CPU it cannot run
    # on stops start-up here, with one line, instead of every model process dying of SIGILL.
    try:
        backend = await cpu.probe()
    except cpu.ProbeFailed as exc:
        await runner.cleanup()
        raise StartupError(str(exc)) from None
    log.info("llama.cpp CPU backend: %s", backend.describe())
    alive = asyncio.create_task(keep_alive(notifier, manager), name="systemd-keep-alive")

    async def start_then_ready() -> None:
        await manager.start()
        notifier.ready(status_line(manager))
        log.info("ready: %s", status_line(manager))

    async def reloads() -> None:
        with contextlib.suppress(Exception):
            await starting  # a SIGHUP during start-up is handled once the models are up
        while True:
            await hup.wait()
            await asyncio.sleep(RELOAD_COALESCE_S)
            hup.clear()  # a SIGHUP from here on reads the file again afterwards
            notifier.reloading()
            await _reload(provider, manager, tls)
            await reload_keys(app)  # the keys file is re-read on SIGHUP too
            notifier.ready(status_line(manager))

    starting = asyncio.create_task(start_then_ready(), name="start-models")
    reloader = asyncio.create_task(reloads(), name="reload")
    await stop.wait()
    notifier.stopping()
    log.info(
        "stopping: finishing in-flight requests (up to %.0f s)",
        provider.current.server.shutdown_timeout_s,
    )
    for task in (starting, reloader):
        task.cancel()
    # cleanup() closes the listener, waits for running handlers up to shutdown_timeout, then
    # cancels the rest; the models stay up until then so those requests can finish. The
    # watchdog pings go on meanwhile: a SIGTERM systemd did not send leaves the unit running.
    await runner.cleanup()
    await manager.stop()
    alive.cancel()
    for task in (starting, reloader, alive):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    log.info("stopped")


async def _reload(
    provider: SettingsProvider, manager: ModelManager, tls: RotatingContext | None
) -> None:
    """Apply the config file's new content, or keep the running one if it cannot be used."""
    if not provider.reloadable:
        log.warning("SIGHUP: no config file to reload (started on defaults)")
        return
    log.info("SIGHUP: reloading the configuration")

    async def apply(new: Settings) -> None:
        _keep_address(provider.current, new)
        # The pair is read and checked before anything changes: one that cannot be used is a
        # ConfigError, which refuses the whole reload (the old pair and config stay).
        pair = configured_pair(new, provider.path) if tls else None
        await manager.apply_settings(new)
        if tls and pair:
            tls.use(pair)
            log.info("TLS: serving %s to new connections", pair)

    try:
        reloaded = await provider.reload(check=models_dir_problem, apply=apply)
    except Exception:
        # A refused file is logged by the provider; anything else (reading it, applying the
        # new models) is unexpected: keep serving on what runs, and keep taking SIGHUPs.
        log.exception("reload failed; serving what is running")
        return
    if reloaded:
        log.info("configuration reloaded: %s", status_line(manager))


def _keep_address(current: Settings, new: Settings) -> None:
    """The listening address, and whether it speaks TLS, change only with a restart: keep the
    running ones in `new` (a new pair for a TLS listener is a rotation, applied)."""
    for key in ("host", "port"):
        old_value, new_value = getattr(current.server, key), getattr(new.server, key)
        if new_value != old_value:
            log.warning(
                "server.%s changed from %s to %s: takes effect only after a restart",
                key,
                old_value,
                new_value,
            )
            setattr(new.server, key, old_value)
    was_tls, is_tls = current.server.tls_cert is not None, new.server.tls_cert is not None
    if was_tls != is_tls:
        log.warning(
            "server.tls_cert and tls_key %s: HTTPS is turned %s only by a restart",
            "removed" if was_tls else "set",
            "off" if was_tls else "on",
        )
        # Both at once: one alone would meet the both-or-neither check half done.
        new.server = new.server.model_copy(
            update={"tls_cert": current.server.tls_cert, "tls_key": current.server.tls_key}
        )


def run(provider: SettingsProvider) -> None:
    asyncio.run(serve(provider))
