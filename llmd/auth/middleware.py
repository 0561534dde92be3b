"""Who may call what: authentication, rights, limits and the usage hooks, in one middleware.

Rules (docs/auth.md):
- Paths in `app[PUBLIC_PATHS]` (`/health`, `/ready`) need no key.
- A key is required for every other path when a key exists, when `auth.require_auth` is on,
  or when the daemon listens beyond loopback (unless `auth.allow_unauthenticated_remote`).
- Every `/api/v1/*` path except `/api/v1/health` is admin-only: keys, usage, audit, and the
  model management endpoints.
- `/metrics` (every key's name and usage) then needs an admin key or a key with the
  `metrics` right (Prometheus' key); without keys, `metrics.access` alone decides.
- A key limited to some models gets 403 for the others (`authorize_model`).
Runs inside error_middleware, so its errors leave as OpenAI bodies (Anthropic's on its routes)
and are recorded. A key comes as `Authorization: Bearer` or, as Anthropic's SDK sends it,
`x-api-key`. A state change (POST, PUT, PATCH, DELETE) sent by a page of another site is
refused (its Origin header names another host): llmd answers no CORS, but a browser still
sends a "simple" cross-site request, and with no keys (or with the console's cookie) it would
act. On the API's paths (`/v1/*`, `/api/v1/*`, `/metrics`) a request without either may
come with the web console's session cookie instead (llmd/console/session.py), taken as the key
signed in with, its rights, limits and usage as if the key had been sent. A cookie is sent by
the browser on its own, so a state change made with it (POST, PUT, PATCH, DELETE) must also
carry the session's CSRF token in `X-CSRF-Token`, which a page of another site cannot read.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from llmd.auth.keys import Key
from llmd.auth.limits import Limiter
from llmd.auth.pacing import Pacing
from llmd.auth.registry import KeyRegistry
from llmd.body import read_json
from llmd.errors import AuthenticationError, InvalidRequest, PermissionDenied, ServiceUnavailable
from llmd.record import RequestRecord, get_record
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from llmd.usage.store import UsageStore

log = logging.getLogger("llmd.auth")

PUBLIC_PATHS = web.AppKey("public_paths", set[str])
KEY = web.RequestKey("llmd_key", Key)
_GENERATION = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
}
METRICS_PATH = "/metrics"
SESSION_COOKIE = "llmd_session"
CSRF_HEADER = "X-CSRF-Token"
_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


class SessionKeys(Protocol):
    """The console's sessions as the middleware uses them (llmd/console/session.py)."""

    def key_of(self, session_id: str) -> Key | None:
        """The key of the live session with this id; None when it has ended."""

    def csrf_valid(self, session_id: str, token: str) -> bool:
        """Whether `token` is the session's CSRF token (compared in constant time)."""


def takes_session(path: str) -> bool:
    """The paths a console session cookie is taken on: the API, nothing else."""
    return path.startswith(("/v1/", "/api/v1/")) or path == METRICS_PATH


def check_origin(request: web.Request) -> None:
    """403 for a state change a page of another site sent. A browser sends Origin on every
    cross-site POST (and "null" from a sandboxed or file page); a client that sends none
    (curl, an SDK, a script) is not a browser being abused. The console's own page sends its
    own origin: behind a proxy, Host must be passed through (docs/operations.md)."""
    origin = request.headers.get("Origin")
    if origin is None or request.method not in _STATE_CHANGING:
        return
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower():
        return
    raise PermissionDenied(
        f"A {request.method} from a page of another site (Origin: {origin[:200]}) is refused: "
        "llmd takes state changes from its own console and from clients that are not browsers.",
        code="origin_not_allowed",
    )


def session_ended() -> AuthenticationError:
    return AuthenticationError(
        "Your console session has ended (signed out, expired, or its key was revoked or "
        "changed). Sign in again.",
        code="session_expired",
    )


def is_admin_path(path: str) -> bool:
    return path.startswith("/api/v1/") and path != "/api/v1/health"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Auth:
    provider: SettingsProvider
    registry: KeyRegistry
    limiter: Limiter
    store: UsageStore | None
    pacing: Pacing = field(init=False)
    sessions: SessionKeys | None = field(default=None, init=False)
    """The console's sessions; None: no session cookie is taken ([console] enabled = false)."""

    def __post_init__(self) -> None:
        self.pacing = Pacing(lambda: self.settings.auth)

    @property
    def settings(self) -> Settings:
        """The settings now: a reload's values apply from the next request on."""
        return self.provider.current

    @property
    def loopback(self) -> bool:
        return is_loopback(self.settings.server.host)

    def required(self) -> bool:
        a = self.settings.auth
        return (
            self.registry.active
            or a.require_auth
            or (not self.loopback and not a.allow_unauthenticated_remote)
        )

    def start_warnings(self) -> None:
        if self.loopback or self.registry.active or self.settings.auth.require_auth:
            return
        host = self.settings.server.host
        if self.settings.auth.allow_unauthenticated_remote:
            log.warning(
                "listening on %s beyond loopback WITHOUT authentication "
                "(auth.allow_unauthenticated_remote = true): anyone who can reach this port "
                "can use the models",
                host,
            )
        else:
            log.warning(
                "listening on %s beyond loopback and no API key exists: every request is "
                "refused with 401 until one is added with `llmd keys add NAME`",
                host,
            )

    async def authenticate(self, request: web.Request) -> Key:
        """The request's key, or AuthenticationError (401). A check that costs a hash waits
        for the address's turn first (RateLimited, 429, when that is too far off). Without a
        key header, a console session cookie stands for its key on the API's paths."""
        secret = _secret(request)
        session_id = request.cookies.get(SESSION_COOKIE)
        if not secret and session_id and self.sessions is not None and takes_session(request.path):
            return self.session_key(request, self.sessions, session_id)
        return await self.check_secret(request.remote or "", secret)

    def session_key(self, request: web.Request, sessions: SessionKeys, session_id: str) -> Key:
        """The key of the request's console session: 401 when it has ended, 403 for a state
        change without its CSRF token. An unknown cookie is not paced as a wrong key is: a
        session id is 256 random bits, nothing to guess, and no hash is spent on it."""
        key = sessions.key_of(session_id)
        if key is None:
            raise session_ended()
        if request.method in _STATE_CHANGING and not sessions.csrf_valid(
            session_id, request.headers.get(CSRF_HEADER, "")
        ):
            raise PermissionDenied(
                f"A {request.method} made with the console's session cookie needs the "
                f"session's CSRF token in the {CSRF_HEADER} header (GET /ui/session gives it).",
                code="csrf_token_invalid",
            )
        return key

    async def check_secret(self, address: str, secret: str) -> Key:
        """The key of `secret` sent from `address`, or AuthenticationError (401); failures
        are paced per address (llmd/auth/pacing.py). The API and the console's sign-in both
        check a key here."""
        if not secret:
            self.pacing.failed(address)
            raise AuthenticationError(
                "You didn't provide an API key. Provide it in an Authorization header "
                "(Authorization: Bearer YOUR_KEY) or an x-api-key header.",
                code="missing_api_key",
            )
        key, reason = await self.registry.verify(secret, lambda: self.pacing.wait_turn(address))
        if key is None:
            self.pacing.failed(address)
            raise AuthenticationError(reason, code="invalid_api_key")
        self.pacing.succeeded(address)
        return key

    def check_store(self) -> None:
        store = self.store
        if store is None:
            return
        if store.full or (not store.healthy and self.settings.usage.on_db_failure == "closed"):
            raise ServiceUnavailable(
                "Usage records cannot be written right now, and this server does not serve "
                "unrecorded requests. Try again later.",
                code="usage_store_unavailable",
                retry_after=5,
            )

    def wants_content(self, key: Key | None) -> bool:
        return self.settings.usage.log_content or (key is not None and key.record.log_content)


AUTH = web.AppKey("auth", Auth)


def _secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip()


async def _capture_prompt(request: web.Request) -> str | None:
    try:
        body = await read_json(request)
    except InvalidRequest:
        return None
    if not isinstance(body, dict):
        return None
    prompt = body.get("messages", body.get("prompt", body.get("input")))
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    # The Responses API's instructions and the Messages API's system prompt are prompt too.
    system = body.get("instructions", body.get("system"))
    if system is not None:
        written = system if isinstance(system, str) else json.dumps(system, ensure_ascii=False)
        text = json.dumps({"system": written, "prompt": text}, ensure_ascii=False)
    return text


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    check_origin(request)
    if request.path in request.app[PUBLIC_PATHS]:
        return await handler(request)  # type: ignore[no-any-return]
    auth = request.app[AUTH]
    record = get_record(request)
    key: Key | None = None
    if auth.required():
        key = await auth.authenticate(request)
        record.key_name = key.name
        record.weight = key.record.weight
        request[KEY] = key
        if is_admin_path(request.path) and not key.record.admin:
            raise PermissionDenied(
                f"The API key '{key.name}' is not an admin key: {request.path} needs one.",
                code="admin_key_required",
            )
        if request.path == METRICS_PATH and not (key.record.admin or key.record.metrics):
            raise PermissionDenied(
                f"The API key '{key.name}' may not read metrics: {METRICS_PATH} needs an "
                "admin key or a key with the metrics right (`llmd keys add NAME --metrics`).",
                code="metrics_key_required",
            )
    if request.path.startswith("/v1/"):
        auth.check_store()
    if key is not None:
        auth.limiter.admit(key.name, key.record)
    try:
        if request.path in _GENERATION and request.method == "POST" and auth.wants_content(key):
            record.prompt_text = await _capture_prompt(request)
            record.answer_parts = []
        return await handler(request)  # type: ignore[no-any-return]
    finally:
        if key is not None:
            auth.limiter.release(key.name, charged_tokens(record, auth.settings))


def charged_tokens(record: RequestRecord, settings: Settings) -> int:
    """The tokens a request counts against its key's token limits: none for an answer from
    the response cache (no model work was done), unless the operator says otherwise."""
    if record.cache == "hit" and not settings.cache.count_hit_tokens:
        return 0
    return record.prompt_tokens + record.completion_tokens


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The x-ratelimit-* headers on every response to a key that has limits."""
    key: Key | None = request.get(KEY)
    if key is not None:
        response.headers.update(request.app[AUTH].limiter.headers(key.name, key.record))


def authorize_model(request: web.Request, name: str, aliases: list[str]) -> None:
    """403 when the request's key may not use this model."""
    key: Key | None = request.get(KEY)
    if key is not None and not key.record.allows_model({name, *aliases}):
        raise PermissionDenied(
            f"The API key '{key.name}' may not use the model '{name}'.",
            code="model_not_allowed",
            param="model",
        )


def may_use_model(request: web.Request, name: str, aliases: list[str]) -> bool:
    key: Key | None = request.get(KEY)
    return key is None or key.record.allows_model({name, *aliases})
