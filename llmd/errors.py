"""Typed errors, turned into OpenAI-shaped bodies in one place (the app's error middleware),
or Anthropic-shaped ones on Anthropic's routes (`anthropic_error`).

APIError                    any error a client should see, with its HTTP status
├── InvalidRequest          400 invalid_request_error: the request itself is wrong
├── AuthenticationError     401: no key, or a key that is not valid
├── PermissionDenied        403 permission_error: a valid key, or a client, without the right
├── ModelNotFound           404 model_not_found
├── RateLimited             429: a key's limit or monthly quota (llmd.auth.limits)
└── ServiceUnavailable      503: overloaded, loading, crashed or shutting down; has Retry-After
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status is not None:
            self.status = status
            if status < 500 and self.type == "server_error":
                # A client's mistake told by status alone (a key not found, a name taken):
                # its type must not say the server failed.
                self.type = "invalid_request_error"
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(APIError):
    status = 401
    type = "invalid_request_error"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"


class ModelNotFound(APIError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"

    def __init__(self, message: str, *, code: str = "service_unavailable", retry_after: int = 1):
        super().__init__(message, code=code, retry_after=retry_after)


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ANTHROPIC_ROUTES = "/v1/messages"
"""Paths under this one answer errors in Anthropic's shape (`anthropic_error`)."""
OVERLOADED = 529
"""Anthropic's status for "overloaded": what llmd's 503s (busy, loading, restarting) are
there; the SDK retries it, honouring Retry-After, as it does a 503."""
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def is_anthropic(path: str, anthropic_version: bool = False) -> bool:
    """Whether a request is answered in Anthropic's shapes: the Messages routes, and the model
    list asked by Anthropic's SDK (which sends an `anthropic-version` header)."""
    if anthropic_version and (path == "/v1/models" or path.startswith("/v1/models/")):
        return True
    return path == ANTHROPIC_ROUTES or path.startswith(ANTHROPIC_ROUTES + "/")


def anthropic_error(
    status: int, message: str, param: str | None = None, request_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """An error as Anthropic's API answers it: its status and
    `{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`. Anthropic's
    body has no `param`: a 4xx's message starts with the field it is about (as Anthropic's
    own do: "max_tokens: Field required")."""
    if status == 503:
        status = OVERLOADED
    default = "api_error" if status >= 500 else "invalid_request_error"
    if param and status < 500 and not message.startswith(f"{param}:"):
        message = f"{param}: {message}"
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, default), "message": message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return status, body
