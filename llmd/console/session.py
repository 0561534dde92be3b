"""The console's sign-in: an admin key exchanged for a session cookie, and the sessions held.

`POST /ui/session` checks the key exactly as the API does (the auth middleware's
`Auth.check_secret`: the same pacing of failed attempts, the same scrypt) and answers with a
random session id in the `llmd_session` cookie (HttpOnly, SameSite=Strict, Secure under TLS)
and a CSRF token in the body. The middleware then takes the cookie as that key on the API's
paths, the token required on every state change (llmd/auth/middleware.py). `GET /ui/session`
tells the page where it stands; `DELETE /ui/session` signs out.

Sessions live in this process's memory only (a restart signs everyone out), at most
`MAX_SESSIONS`, the oldest dropped first. Each ends at its expiry, on sign-out, or as soon as
its key is no longer the one signed in with: revoked, deleted, expired, rotated or no longer
admin (checked against the key registry on every use, so a change made through the admin
API, which does not call the registry's on_gone hooks, ends it too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from llmd.auth.keys import Key
from llmd.auth.middleware import (
    AUTH,
    CSRF_HEADER,
    PUBLIC_PATHS,
    SESSION_COOKIE,
    session_ended,
)
from llmd.auth.registry import KeyRegistry
from llmd.body import read_json
from llmd.console.pages import SECURITY_HEADERS
from llmd.errors import InvalidRequest, PermissionDenied
from llmd.usage.recorder import AUDIT

PATH = "/ui/session"
MAX_SESSIONS = 1000
"""Sessions held at most; past it the oldest is dropped (only admin keys sign in: a handful
of people, so this bound is only ever reached by a flood)."""
MAX_KEY_CHARS = 8192
HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
"""The answers carry the CSRF token: never kept by a cache."""


def same_secret(expected: str, given: str) -> bool:
    """Constant-time comparison of two tokens (a header may hold any text)."""
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


def _digest(session_id: str) -> bytes:
    # Sessions are found by the hash of their id: the dict lookup's timing says nothing
    # about the ids held, and a memory dump holds no usable cookie.
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Session:
    key: str
    """The name of the key signed in with."""
    key_id: str
    key_hash: str
    """The key's id and hash at sign-in: a rotated key (new secret) ends the session."""
    csrf: str
    expires: float
    """Wall-clock time (seconds since the epoch) the session ends at."""

    def expires_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.expires, dt.UTC).isoformat(timespec="seconds")


class SessionStore:
    """The sessions in force, by the hash of their id, oldest first."""

    def __init__(
        self,
        registry: KeyRegistry,
        ttl_s: Callable[[], float],
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        """The session lifetime now (a reload's value applies to the next sign-in)."""
        self.clock = clock
        self.max_sessions = max_sessions
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, key: Key) -> tuple[str, Session]:
        """A new session for `key`: (its id, for the cookie, and the session)."""
        now = self.clock()
        self._sessions = {d: s for d, s in self._sessions.items() if s.expires > now}
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = Session(
            key=key.name,
            key_id=key.record.id,
            key_hash=key.record.hash,
            csrf=secrets.token_urlsafe(32),
            expires=now + self.ttl_s(),
        )
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def find(self, session_id: str) -> tuple[Session, Key] | None:
        """The live session with this id and its key as the registry holds it now; None when
        there is none or it has ended (it is dropped then)."""
        digest = _digest(session_id)
        session = self._sessions.get(digest)
        if session is None:
            return None
        key = self._key_in_force(session)
        if key is None or session.expires <= self.clock():
            del self._sessions[digest]
            return None
        return session, key

    def _key_in_force(self, session: Session) -> Key | None:
        record = self.registry.keys.get(session.key)
        if (
            record is None
            or record.id != session.key_id
            or record.hash != session.key_hash
            or record.revoked is not None
            or record.expired(self.registry.clock())
            or not record.admin
        ):
            return None
        return Key(session.key, record)

    def end(self, session_id: str) -> bool:
        """Sign-out: the session is gone (False when there was none)."""
        return self._sessions.pop(_digest(session_id), None) is not None

    async def forget_keys(self, names: list[str]) -> None:
        """The registry's on_gone hook: keys revoked or deleted in the file end their
        sessions now (each use checks too; this frees them without waiting for one)."""
        gone = set(names)
        self._sessions = {d: s for d, s in self._sessions.items() if s.key not in gone}

    # The auth middleware's SessionKeys protocol.
    def key_of(self, session_id: str) -> Key | None:
        found = self.find(session_id)
        return found[1] if found is not None else None

    def csrf_valid(self, session_id: str, token: str) -> bool:
        found = self.find(session_id)
        return found is not None and same_secret(found[0].csrf, token)


SESSIONS = web.AppKey("console_sessions", SessionStore)


def _state(auth_mode: str, session: Session | None = None, admin: bool = False) -> dict[str, Any]:
    return {
        "auth": auth_mode,
        "signed_in": session is not None,
        "key": session.key if session else None,
        "admin": admin or session is not None,
        "csrf": session.csrf if session else None,
        "expires": session.expires_iso() if session else None,
    }


def _clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        SESSION_COOKIE, path="/", secure=request.secure, httponly=True, samesite="Strict"
    )


async def get_session(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if not auth.required():
        # The API needs no key: the console works without signing in, with every right.
        return web.json_response(_state("open", admin=True), headers=HEADERS)
    session_id = request.cookies.get(SESSION_COOKIE)
    found = request.app[SESSIONS].find(session_id) if session_id else None
    response = web.json_response(_state("required", found[0] if found else None), headers=HEADERS)
    if session_id and found is None:
        _clear_cookie(request, response)  # a cookie of an ended session: the browser drops it
    return response


async def sign_in(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    body = await read_json(request, not_json='The body must be JSON: {"key": "<admin key>"}.')
    secret = body.get("key") if isinstance(body, dict) else None
    # A header cannot hold more than 8 KiB either: no hash is spent on a megabyte "key".
    if not isinstance(secret, str) or len(secret) > MAX_KEY_CHARS:
        raise InvalidRequest('The body must be {"key": "<an admin API key>"}.', param="key")
    # The API's own check: a wrong key is paced and refused exactly as on any API call.
    key = await auth.check_secret(request.remote or "", secret.strip())
    if not key.record.admin:
        raise PermissionDenied(
            f"The API key '{key.name}' is not an admin key: the console needs one.",
            code="admin_key_required",
        )
    sessions = request.app[SESSIONS]
    session_id, session = sessions.create(key)
    audit = request.app.get(AUDIT)
    if audit is not None:
        audit.record(f"key:{key.name}", "console.signed_in", key.name, request.remote)
    response = web.json_response(_state("required", session), headers=HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=max(1, round(session.expires - sessions.clock())),
        path="/",
        secure=request.secure,
        httponly=True,
        samesite="Strict",
    )
    return response


async def sign_out(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    session_id = request.cookies.get(SESSION_COOKIE, "")
    found = sessions.find(session_id) if session_id else None
    if found is None:
        raise session_ended()
    if not sessions.csrf_valid(session_id, request.headers.get(CSRF_HEADER, "")):
        raise PermissionDenied(
            f"Signing out needs the session's CSRF token in the {CSRF_HEADER} header.",
            code="csrf_token_invalid",
        )
    sessions.end(session_id)
    audit = request.app.get(AUDIT)
    if audit is not None:
        audit.record(f"key:{found[0].key}", "console.signed_out", found[0].key, request.remote)
    mode = "required" if request.app[AUTH].required() else "open"
    response = web.json_response(_state(mode), headers=HEADERS)
    _clear_cookie(request, response)
    return response


def add_routes(app: web.Application) -> None:
    """/ui/session, and the session store handed to the auth middleware. Call after
    install_auth (the store checks sessions against its key registry)."""
    auth = app[AUTH]
    store = SessionStore(auth.registry, lambda: auth.settings.console.session_ttl_s())
    app[SESSIONS] = store
    auth.sessions = store
    auth.registry.on_gone.append(store.forget_keys)
    # Public to the middleware: each handler checks what it needs itself.
    app.setdefault(PUBLIC_PATHS, set()).add(PATH)
    app.router.add_get(PATH, get_session)
    app.router.add_post(PATH, sign_in)
    app.router.add_delete(PATH, sign_out)
