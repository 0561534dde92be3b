"""Failed authentications per client address: how long its next key check waits.

A key check that is not answered from the cache costs a scrypt (tens of ms of a core and
16 MiB, llmd/auth/keys.py). An address that has been failing waits *before* its next check,
not after it, and the checks of one address are spaced out however many connections it opens:
each check books the address's next turn one delay later, the delay doubling per check booked
(and per failure) from `auth.failure_delay_s` up to `auth.failure_delay_max_s`. So parallel
guesses cannot each burn a scrypt: a check whose turn is further off than
`failure_delay_max_s` is not made, it is answered 429 with a Retry-After, unchecked (no hash,
no key named). From a new address, a burst gets about six checks in its first two seconds
(defaults), then one per two seconds. A success, or five minutes without a failure, forgets
the address.

Only the check that would hash waits: a key seen before is recognised from the cache at once,
whatever its address did (llmd/auth/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmd.auth.limits import RateLimited
from llmd.settings import AuthSettings

log = logging.getLogger("llmd.auth")

FORGET_S = 300.0
"""An address without a failure for this long starts again from no delay."""
MAX_ADDRESSES = 10_000
"""Past this many addresses tracked, the forgotten ones are dropped."""


@dataclass
class _Address:
    failures: int = 0
    """Consecutive failed authentications."""
    checks: int = 0
    """Checks booked since the address was last forgotten (finished or not)."""
    last: float = 0.0
    """When the last failure or check was (monotonic)."""
    next_check: float = 0.0
    """No key check that hashes starts before then (monotonic)."""


@dataclass
class Pacing:
    settings: Callable[[], AuthSettings]
    """The settings in force now (a reload's values apply from the next check on)."""
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _addresses: dict[str, _Address] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        """The gap after `failures` consecutive failures (0 for none)."""
        if failures < 1:
            return 0.0
        a = self.settings()
        return float(min(a.failure_delay_max_s, a.failure_delay_s * 2 ** min(failures - 1, 30)))

    def _get(self, address: str, now: float) -> _Address:
        if len(self._addresses) > MAX_ADDRESSES:
            self._addresses = {
                k: v
                for k, v in self._addresses.items()
                if now - max(v.last, v.next_check) < FORGET_S
            }
        entry = self._addresses.setdefault(address, _Address())
        if now - entry.last > FORGET_S:
            entry.failures = entry.checks = 0
        return entry

    async def wait_turn(self, address: str) -> None:
        """Before a check that hashes: wait for this address's turn, or raise RateLimited
        (429) when the turn is further off than failure_delay_max_s."""
        now = self.clock()
        entry = self._get(address, now)
        start = max(now, entry.next_check)
        wait = start - now
        if wait > self.settings().failure_delay_max_s:
            raise RateLimited(
                "Too many failed authentications from your address: no key is checked for "
                f"it for {math.ceil(wait)} s.",
                code="rate_limit_exceeded",
                retry_after=math.ceil(wait),
            )
        # Booked checks count, not only failed ones: a burst of parallel guesses is spread
        # out before any of them has failed.
        entry.checks += 1
        entry.next_check = start + self.delay(max(entry.failures, entry.checks))
        entry.last = now
        if wait > 0:
            await self.sleep(wait)

    def failed(self, address: str) -> None:
        """A failed authentication: the address's next check waits the next delay."""
        now = self.clock()
        entry = self._get(address, now)
        entry.failures += 1
        entry.last = now
        delay = self.delay(entry.failures)
        entry.next_check = max(entry.next_check, now + delay)
        if entry.failures >= 2:
            log.info(
                "failed authentication #%d from %s: its next key check waits %.2fs",
                entry.failures,
                address,
                delay,
            )

    def succeeded(self, address: str) -> None:
        self._addresses.pop(address, None)
