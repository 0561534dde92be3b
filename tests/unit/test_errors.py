"""llmd/errors.py: the type an error's body carries follows its status."""

from __future__ import annotations

import json

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


def test_a_recursion_error_is_the_clients_400_in_the_routes_shape() -> None:
    """A body nested just under the JSON decoder's limit parses; a later walk over it (a
    schema's conversion, json.dumps of a tool's input) may run deeper than Python allows."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from llmd.record import RECORD, RequestRecord
    from llmd.server.app import error_middleware

    async def too_deep(request: web.Request) -> web.StreamResponse:
        raise RecursionError("maximum recursion depth exceeded")

    async def answer(path: str) -> tuple[int, dict[str, object]]:
        request = make_mocked_request("POST", path)
        request[RECORD] = RequestRecord("r", "POST", path, path, "", 0.0, 0.0)
        response = await error_middleware(request, too_deep)
        assert isinstance(response, web.Response) and response.text is not None
        return response.status, json.loads(response.text)

    status, body = asyncio.run(answer("/v1/chat/completions"))
    assert status == 400 and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    status, body = asyncio.run(answer("/v1/messages"))
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
