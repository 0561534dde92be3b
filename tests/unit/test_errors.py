"""llmd/errors.py: the type an error's body carries follows its status."""

from __future__ import annotations

from llmd.errors import APIError, InvalidRequest, ServiceUnavailable


def test_an_error_given_a_4xx_status_is_not_a_server_error() -> None:
    """The keys API's 404 key_not_found and 409 name taken, the usage API's 404 with usage
    off, were all `"type": "server_error"`, which tells a client the server failed."""
    for status in (400, 404, 409):
        body = APIError("no", code="x", status=status).body()["error"]
        assert body["type"] == "invalid_request_error", (status, body)
    assert APIError("timeout", status=504).body()["error"]["type"] == "server_error"
    assert APIError("boom").body()["error"]["type"] == "server_error"
    assert ServiceUnavailable("busy").body()["error"]["type"] == "server_error"
    assert InvalidRequest("bad", status=413).type == "invalid_request_error"
