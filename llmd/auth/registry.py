"""The keys in force in the daemon: loaded from the keys file, reloaded when it changes.

Verification is O(1): the secret's id finds the record; a secret seen and verified before is
recognised by an HMAC under a per-process random key (one hash, constant-time comparison).
Any other secret costs exactly one scrypt, whatever is wrong with it: a wrong secret is checked
against its key's hash, an unknown id or a malformed secret against a dummy hash with the same
parameters, so the time of a refusal does not tell which key ids exist. The scrypt runs in a
thread (the event loop never waits for it), at most `HASHES_AT_ONCE` at a time, after the
caller's `before_hash` (the client address's turn, llmd/auth/pacing.py); several requests with
the same unverified secret at once share one check.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from llmd.auth.keys import (
    Key,
    KeyRecord,
    KeysFileError,
    check_hash,
    dummy_hash,
    parse_secret,
    read_keys_file,
)

log = logging.getLogger("llmd.auth")

INCORRECT = "Incorrect API key provided."

# scrypt takes a core and 16 MiB for tens of ms: a flood of wrong secrets (from many
# addresses: one address is paced) runs at most this many at a time, so it cannot take every
# core or much memory. Half the cores, at least one, at most two.
HASHES_AT_ONCE = max(1, min(2, (os.cpu_count() or 2) // 2))


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
        """Called (in the reading thread) with the names of the keys a reload changed."""
        self.on_gone: list[Callable[[list[str]], Awaitable[None]]] = []
        """Awaited after a reload with the names of the keys that were in force (not revoked)
        before it and are revoked or deleted now: their data goes (llmd/auth/setup.py). A
        rotated key (same name, new secret) is not gone. Neither is called for a quiet reload:
        the admin API does that work itself."""
        self._pepper = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        """key id -> HMAC of the secret that verified for it (forgotten when the key changes)."""
        self._stamp: tuple[float, int, int] | None = None
        self._dummy = dummy_hash()
        self._slow_checks = asyncio.Semaphore(HASHES_AT_ONCE)
        self._checking: dict[tuple[bytes, str], asyncio.Future[bool]] = {}
        """(HMAC of a secret, the hash it is checked against) -> the check under way."""
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

    def _in_force(self) -> set[str]:
        return {name for name, rec in self.keys.items() if rec.revoked is None}

    async def reload(self, quiet: bool = False) -> bool:
        before = self._in_force()
        loaded = await asyncio.to_thread(self.load, quiet)
        gone = sorted(before - self._in_force())
        if gone and not quiet:
            for listener in self.on_gone:
                try:
                    await listener(gone)
                except Exception:  # the watcher must survive a listener's failure
                    log.exception("after keys %s were revoked or deleted", ", ".join(gone))
        return loaded

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
        data = secret.encode("utf-8", "surrogatepass")  # any header text, lone surrogates too
        return hmac.new(self._pepper, data, hashlib.sha256).digest()

    async def verify(
        self, secret: str, before_hash: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[Key | None, str]:
        """(key, "") when the secret is valid and the key usable, else (None, reason).

        `before_hash` is awaited before a check that costs a scrypt (not for a secret verified
        before); it may raise to refuse the check."""
        key_id = parse_secret(secret)
        name = self.by_id.get(key_id) if key_id is not None else None
        mac = self._mac(secret)
        if key_id is None or name is None:
            # An unknown id or a malformed secret costs the same check as a wrong secret.
            await self._check(mac, secret, self._dummy, before_hash)
            return None, INCORRECT
        record = self.keys[name]
        known = self._verified.get(key_id)
        if known is None or not hmac.compare_digest(known, mac):
            if not await self._check(mac, secret, record.hash, before_hash):
                return None, INCORRECT
            if self.keys.get(name) is record:  # still the same record after the await
                self._verified[key_id] = mac
        if record.revoked is not None:
            return None, f"The API key '{name}' has been revoked."
        if record.expired(self.clock()):
            return None, f"The API key '{name}' has expired."
        return Key(name, record), ""

    async def _check(
        self,
        mac: bytes,
        secret: str,
        stored: str,
        before_hash: Callable[[], Awaitable[None]] | None,
    ) -> bool:
        """One scrypt per secret at a time: requests with the same secret arriving while it
        is checked wait for that check (a client's parallel first requests cost one)."""
        slot = (mac, stored)
        task = self._checking.get(slot)
        if task is None:

            async def check() -> bool:
                if before_hash is not None:
                    await before_hash()
                async with self._slow_checks:
                    return await asyncio.to_thread(check_hash, secret, stored)

            task = self._checking[slot] = asyncio.ensure_future(check())

            def done(task: asyncio.Future[bool]) -> None:
                self._checking.pop(slot, None)
                if not task.cancelled():
                    task.exception()  # retrieved: every waiter may have gone

            task.add_done_callback(done)
        # Shielded: a client that hangs up does not cancel a check others wait for.
        return await asyncio.shield(task)
