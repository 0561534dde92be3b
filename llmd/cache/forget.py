"""Data deletion covers the cache: an API key revoked, deleted from the keys file or whose
data is purged loses its cached answers (the scope `key:NAME`), as it loses its stored
responses. Shared entries are nobody's own and stay.

The key's revocation has happened by then and must not be undone or failed by a cache that
cannot be reached: a failure is logged and told to the caller, whose audit entry says so; the
entries then stay until their TTL, or an operator's `llmd cache clear --key NAME`.
"""

from __future__ import annotations

import logging
from typing import Any

from llmd.cache.front import ResponseCache

log = logging.getLogger("llmd.cache")

CLEARED = "cache.cleared"
"""The audit log's action for entries deleted (its target: the scope, or `*` for all)."""


async def forget_key(cache: ResponseCache | None, name: str) -> dict[str, Any]:
    """Delete an API key's cached answers; the audit entry's detail: `{"deleted": N}`, or
    `{"error": why}` when the backend failed."""
    if cache is None or not name:  # no name would be every entry: never meant here
        return {"deleted": 0}
    try:
        deleted = await cache.clear(key_name=name)
    except RuntimeError as exc:
        log.warning(
            "cache: the entries of key %r were not deleted (%s): they stay until their TTL "
            "or `llmd cache clear --key %s`",
            name,
            exc,
            name,
        )
        return {"error": str(exc)}
    if deleted:
        log.info(
            "cache: %d entr%s of key %r deleted", deleted, "y" if deleted == 1 else "ies", name
        )
    return {"deleted": deleted}
