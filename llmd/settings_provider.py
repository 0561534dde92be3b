"""The settings the daemon runs on, held by one provider that tells its readers of a reload.

Built once at start from the config file and the command line's overrides. Whatever reads
settings while serving either asks `provider.current` each time (auth, serving, metrics) or
subscribes and is handed each new `Settings` because it must act on a change (logs reopen
their files, the audit log records the reload); nothing is patched in place.

A reload (SIGHUP) reads the same file with the same overrides again:
- a file that cannot be used (a `ConfigError` naming file, line and reason, or a problem that
  `check` names) is refused: each problem is logged and the running settings stay, untouched;
- a usable one goes to `apply` first (the daemon: the TLS pair, then the model manager; if it
  raises, the running settings stay too, and a `ConfigError` it raises before changing
  anything, a TLS pair that cannot be loaded, is a refusal like a bad file), then becomes
  `current`, then every subscriber is told, in the order they subscribed, with no await in
  between: all of them see the new values at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

from llmd.settings import Settings
from llmd.settings_file import ConfigError, load_settings

# The daemon's logger: a refused reload reads as the daemon's own line in the journal.
log = logging.getLogger("llmd")

Listener = Callable[[Settings], None]
"""Told each new Settings once a reload applied it; quick, on the event loop."""


class SettingsProvider:
    """The current settings, where they are read from, and who follows them."""

    def __init__(
        self,
        settings: Settings,
        source: Callable[[], Settings] | None = None,
        path: Path | None = None,
    ) -> None:
        self._current = settings
        # Reads the settings again (raises ConfigError); None: there is nothing to reload.
        self._source = source
        self.path = path  # the config file, None when running on defaults (for messages)
        self._listeners: list[Listener] = []

    @classmethod
    def from_file(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> Self:
        """Settings from `path` (the defaults when None) with `overrides` on top. A reload
        reads the same file with the same overrides; without a file there is none."""

        def read() -> Settings:
            return load_settings(path, overrides)

        return cls(read(), read if path is not None else None, path)

    @property
    def current(self) -> Settings:
        return self._current

    @property
    def reloadable(self) -> bool:
        return self._source is not None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(new)` after every reload that applied new settings."""
        self._listeners.append(listener)

    async def reload(
        self,
        check: Callable[[Settings], str | None] | None = None,
        apply: Callable[[Settings], Awaitable[None]] | None = None,
    ) -> bool:
        """Read the source again and, when the result can be used, make it current and tell
        the subscribers. False (and the running settings stay) when it was refused or there is
        no source; `apply` refuses with ConfigError (before it changes anything), any other
        exception from it propagates, the running settings staying."""
        if self._source is None:
            return False
        try:
            new = await asyncio.to_thread(self._source)  # file I/O off the event loop
            if check is not None and (problem := check(new)):
                raise ConfigError(problem)
            if apply is not None:
                await apply(new)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                log.error("reload refused, the previous configuration stays: %s", line)
            return False
        self._current = new
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:  # one listener's bug must not keep the others on old settings
                log.exception("settings listener %r failed", listener)
        return True
