"""The daemon's app in-process, for unit tests of serving, auth and the HTTP surface.

`serve` builds what `llmd serve` builds, minus llama.cpp and the network: settings, a
`ModelManager` on fake model processes (tests/unit/fake_process.py), `create_app`, and an
aiohttp test server and client on it, then runs one test against it on a fresh event loop:

    def test_something(tmp_path: Path) -> None:
        async def test(h: Harness) -> None:
            resp = await h.post("/v1/chat/completions", {"messages": HI})
            body = await json_of(resp, 200)
            assert h.submitted()[0].sampling.temperature == 1.0

        serve(tmp_path, test)

The models are the e2e suite's names (tests/e2e/conftest.py): `smollm2` (alias `smol`, the
default) and `gemma3-270m` (two slots), both loaded at start; `files` adds plain files to
the models directory, served under their own names (loaded on first use). Every fake process
answers `tokens` (default "Hello", ",", " world", "!"), counts a text prompt's words as its
tokens, and records what it was submitted. The request records the app hands its observers
are kept in `Harness.records`.

The assertions on responses (`error_of`, `json_of`, `sse_of`) are those of the e2e tests
(tests/e2e/api.py's `assert_error`, tests/e2e/test_auth.py's `error_of`), so a unit test states
what the e2e test it replaces did.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer

from llmd.engine import messages as m
from llmd.models import ModelManager
from llmd.record import RequestRecord
from llmd.server.app import create_app
from llmd.settings import Settings
from llmd.settings_file import load_settings
from tests.unit.fake_process import FakeProcess, FakeProcesses, until, write_models

SMOL = "smollm2"
GEMMA = "gemma3-270m"
HI = [{"role": "user", "content": "Say hi to me"}]


def settings_for(
    tmp_path: Path, files: Sequence[str] = (), config: dict[str, Any] | None = None
) -> Settings:
    """Two configured models (as in tests/e2e/conftest.py) and `files` in a fresh models
    directory, the keys file `keys_file(tmp_path)`, no usage database unless asked for;
    `config`: settings by dotted name ("server.max_queue") over these."""
    models_dir = write_models(tmp_path / "models", SMOL, GEMMA, *files)
    base: dict[str, Any] = {
        "models_dir": str(models_dir),
        "loading.watch": False,
        "loading.rescan_s": 3600,
        "loading.settle_s": 0,
        "memory.budget": "4GiB",
        "memory.reserve": 0,
        "engine.ctx_per_seq": 256,
        "engine.parallel": 4,
        "server.default_model": SMOL,
        "server.max_queue": 8,
        "usage.enabled": False,
        "usage.database": str(tmp_path / "usage.db"),
        "auth.keys_file": str(keys_file(tmp_path)),
        "auth.failure_delay_s": 0,
        "auth.failure_delay_max_s": 0,
        f"models.{SMOL}.path": f"{SMOL}.gguf",
        f"models.{SMOL}.aliases": ["smol"],
        f"models.{GEMMA}.path": f"{GEMMA}.gguf",
        f"models.{GEMMA}.parallel": 2,
    }
    return load_settings(None, {**base, **(config or {})})


def keys_file(tmp_path: Path) -> Path:
    """Where `settings_for` points the daemon's keys file (write keys with llmd.auth.keys)."""
    return tmp_path / "keys.toml"


@dataclass
class Harness:
    """One running app: its test client, model manager, fake processes and request records."""

    client: TestClient[web.Request, web.Application]
    manager: ModelManager
    processes: FakeProcesses
    records: list[RequestRecord] = field(default_factory=list)

    def process(self, model: str = SMOL) -> FakeProcess:
        """The model's current process (it must be loaded)."""
        current = self.manager.entries[model].current
        assert current is not None, f"{model} is not loaded"
        process = current.process
        assert isinstance(process, FakeProcess)
        return process

    def submitted(self, model: str = SMOL) -> list[m.GenerateRequest]:
        """Every engine request the model's processes were handed, oldest first."""
        return [req for p in self.processes.of(model) for req in p.submitted]

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> ClientResponse:
        """POST `body` as JSON, or `content` as it is (a JSON content type either way)."""
        data = content if content is not None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return await self.client.post(path, data=data, headers=sent)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> ClientResponse:
        return await self.client.get(path, headers=headers or {})

    async def record_of(self, path: str) -> RequestRecord:
        """The record of the last request to `path`, once its observers have it."""
        await until(lambda: any(r.path == path for r in self.records), f"a record of {path}")
        return [r for r in self.records if r.path == path][-1]


def serve(
    tmp_path: Path,
    test: Callable[[Harness], Awaitable[None]],
    *,
    config: dict[str, Any] | None = None,
    files: Sequence[str] = (),
    processes: FakeProcesses | None = None,
) -> None:
    """Run `test` against the app on `settings_for(tmp_path, files, config)` and fake
    `processes` (default: `FakeProcesses()`); everything is stopped afterwards."""
    chosen = settings_for(tmp_path, files, config)
    fakes = processes if processes is not None else FakeProcesses()

    async def main() -> None:
        manager = ModelManager(chosen, fakes, read_rss=fakes.read_rss)
        records: list[RequestRecord] = []
        app = create_app(chosen, manager, observers=[records.append])
        await manager.start()
        try:
            # A response that never ends fails the test in seconds instead of hanging it.
            async with TestClient(TestServer(app), timeout=ClientTimeout(total=10)) as client:
                await test(Harness(client, manager, fakes, records))
        finally:
            await manager.stop()

    asyncio.run(main())


# -- responses ------------------------------------------------------------------------------


async def json_of(resp: ClientResponse, status: int = 200) -> Any:
    """The JSON body of a response with this status."""
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    return json.loads(text)


async def error_of(
    resp: ClientResponse,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
) -> dict[str, Any]:
    """An OpenAI-shaped error with this status: `{"error": {message, type, param, code}}`, a
    message, and `code` / `param` / `type_` when given (None: not checked)."""
    body = await json_of(resp, status)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error


async def sse_of(resp: ClientResponse) -> list[str]:
    """The `data:` payloads of a whole event stream (status 200), in order, as text."""
    text = await resp.text()
    assert resp.status == 200, (resp.status, text)
    assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def chunks_of(payloads: list[str]) -> list[dict[str, Any]]:
    """A stream's JSON chunks, after checking it ends with OpenAI's `[DONE]`, once."""
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1, payloads
    return [json.loads(p) for p in payloads[:-1]]
