"""The keys in force in the daemon: loaded from the keys file, reloaded when it changes.

Verification is O(1): the secret's id finds the record; a secret seen and verified before is
recognised by an HMAC under a per-process random key (one hash, constant-time comparison);
only a first sight costs scrypt, run in a thread so the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

from llmd.auth.keys import Key, KeyRecord, KeysFileError, check_hash, parse_secret, read_keys_file

log = logging.getLogger("llmd.auth")


class KeyRegistry:
    def __init__(
        self,
        path: Path,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.path = path
        self.clock = clock
        self.keys: dict[str, KeyRecord] = {}
        self.by_id: dict[str, str] = {}
        self.error: str | None = None
        self.on_reload: list[Callable[[list[str]], None]] = []
        self._pepper = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        """key id -> HMAC of the secret that verified for it (forgotten when the key changes)."""
        self._stamp: tuple[float, int, int] | None = None
        # scrypt costs 16 MiB and tens of ms: a flood of wrong secrets for a real key id runs
        # at most two at a time, so it cannot take every core or much memory.
        self._slow_checks = asyncio.Semaphore(2)
        self._watcher: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Keys exist (revoked ones included): authentication is required."""
        return bool(self.keys)

    def _file_stamp(self) -> tuple[float, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def load(self, quiet: bool = False) -> bool:
        """(Re)read the file. Invalid: the keys in force stay, the error is logged with its line.
        Blocking: call it in a thread from the event loop. `quiet`: the caller audits the change
        itself (the admin API), so the reload callbacks are not called."""
        stamp = self._file_stamp()
        try:
            keys = read_keys_file(self.path)
        except KeysFileError as exc:
            self._stamp = stamp
            if str(exc) != self.error:
                log.error(
                    "keys file refused, the %d key(s) in force stay:\n%s", len(self.keys), exc
                )
            self.error = str(exc)
            return False
        changed = sorted(
            name for name in set(keys) | set(self.keys) if keys.get(name) != self.keys.get(name)
        )
        self._stamp = stamp
        self.error = None
        by_id = {rec.id: name for name, rec in keys.items()}
        # A changed record (rotated, revoked, new hash) must verify again from scratch.
        self._verified = {
            kid: mac
            for kid, mac in self._verified.items()
            if kid in by_id and keys[by_id[kid]] == self.keys.get(by_id[kid])
        }
        self.keys, self.by_id = keys, by_id
        if changed:
            log.info("keys loaded from %s: %d key(s)", self.path, len(keys))
        if changed and not quiet:
            for callback in self.on_reload:
                callback(changed)
        return True

    async def reload(self, quiet: bool = False) -> bool:
        return await asyncio.to_thread(self.load, quiet)

    def start_watching(self, interval_s: float = 1.0) -> None:
        async def watch() -> None:
            while True:
                await asyncio.sleep(interval_s)
                stamp = await asyncio.to_thread(self._file_stamp)
                if stamp != self._stamp:
                    await self.reload()

        self._watcher = asyncio.create_task(watch(), name="keys-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    async def verify(self, secret: str) -> tuple[Key | None, str]:
        """(key, "") when the secret is valid and the key usable, else (None, reason)."""
        key_id = parse_secret(secret)
        name = self.by_id.get(key_id) if key_id is not None else None
        if key_id is None or name is None:
            return None, "Incorrect API key provided."
        record = self.keys[name]
        mac = self._mac(secret)
        known = self._verified.get(key_id)
        if known is None or not hmac.compare_digest(known, mac):
            async with self._slow_checks:
                valid = await asyncio.to_thread(check_hash, secret, record.hash)
            if not valid:
                return None, "Incorrect API key provided."
            if self.keys.get(name) is record:  # still the same record after the await
                self._verified[key_id] = mac
        if record.revoked is not None:
            return None, f"The API key '{name}' has been revoked."
        if record.expired(self.clock()):
            return None, f"The API key '{name}' has expired."
        return Key(name, record), ""
