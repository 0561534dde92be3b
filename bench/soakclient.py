"""The clients of a soak run (bench/soak.py): each sends a mix of requests with its own key until
the deadline, and writes down what each came to (`bench.soakstats.Outcome`).

A request is judged as a careful client would: a status with a body in OpenAI's error shape
is a clean failure (429 and 503 are refusals, retried after their Retry-After, at most 5 s); a
stream must end with `[DONE]`, or with an error event in the error shape; anything else
(no status, another body, a stream cut short, no answer within the timeout) is not clean.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp

from bench.loadgen import make_text
from bench.soakstats import Outcome

KINDS = {
    "chat_stream": 30,
    "chat": 15,
    "completion_stream": 15,
    "completion": 10,
    "embedding": 10,
    "cancel": 20,
}
"""Request kinds and their weights; `cancel` is a chat stream its client closes early."""
MODEL = "smollm2"


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error_shape(data: Any) -> str | None:
    """The error's code (or type) when `data` is in OpenAI's error shape, else None."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return None
    return str(error.get("code") or error["type"])


def body(kind: str, rng: random.Random, seed: str) -> tuple[str, dict[str, Any]]:
    """The route and body of a request of `kind`."""
    text = make_text(rng.randint(20, 200), seed)
    if kind == "embedding":
        inputs = [make_text(rng.randint(5, 60), f"{seed}/{i}") for i in range(rng.randint(1, 4))]
        return "/v1/embeddings", {"model": MODEL, "input": inputs}
    out: dict[str, Any] = {"model": MODEL, "max_tokens": rng.randint(8, 96)}
    if kind.startswith("completion"):
        route, out["prompt"] = "/v1/completions", text
    else:
        route, out["messages"] = "/v1/chat/completions", [{"role": "user", "content": text}]
    if kind.endswith("stream") or kind == "cancel":
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if kind == "cancel":
        out["max_tokens"] = 128
        out["ignore_eos"] = True  # long enough to be cut
    return route, out


def _usage(o: Outcome, usage: Any) -> None:
    if isinstance(usage, dict):
        o.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        o.completion_tokens = int(usage.get("completion_tokens") or 0)


class Client:
    """One client: one key, one request at a time, until the deadline."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        key: str,
        secret: str,
        index: int,
        timeout: float,
    ) -> None:
        self.session = session
        self.url = url
        self.key = key
        self.headers = auth(secret)
        self.index = index
        self.timeout = timeout
        self.rng = random.Random(f"soak-{index}")

    async def run(self, deadline: float, t0: float, outcomes: list[Outcome]) -> None:
        await asyncio.sleep(self.rng.uniform(0, 2))  # not all at once
        n = 0
        while time.monotonic() < deadline:
            kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            o = Outcome(f"soak-{self.index:02d}-{n:06d}", self.key, kind, time.monotonic() - t0)
            n += 1
            wait = await self.send(o)
            outcomes.append(o)
            if wait:
                await asyncio.sleep(min(wait, 5.0, max(0.0, deadline - time.monotonic())))

    async def send(self, o: Outcome) -> float:
        """Send one request and judge it; the seconds to wait before the next one."""
        route, data = body(o.kind, self.rng, o.request_id)
        headers = {**self.headers, "X-Request-Id": o.request_id}
        start = time.perf_counter()
        wait = 0.0
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.post(self.url + route, json=data, headers=headers) as r:
                    o.status = r.status
                    if r.status != 200:
                        wait = self._refused(o, r.headers.get("Retry-After"), await r.read())
                    elif data.get("stream"):
                        await self._stream(o, r)
                    else:
                        answer = await r.json()
                        ok = isinstance(answer, dict) and ("choices" in answer or "data" in answer)
                        o.result = "ok" if ok else "unclean"
                        _usage(o, answer.get("usage") if ok else None)
        except TimeoutError:
            o.result, o.detail = "hang", f"no end within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            o.result, o.detail = "unclean", f"{type(exc).__name__}: {exc}"[:300]
        o.seconds = time.perf_counter() - start
        if o.result in ("failed_clean", "unclean"):
            wait = max(wait, 0.5)
        return wait

    def _refused(self, o: Outcome, retry_after: str | None, raw: bytes) -> float:
        try:
            o.code = error_shape(json.loads(raw))
        except ValueError:
            o.code = None
        if o.code is None:
            o.result, o.detail = "unclean", raw[:300].decode(errors="replace")
            return 0.0
        refused = o.status in (429, 503)
        o.result = "refused" if refused else "failed_clean"
        o.detail = raw[:300].decode(errors="replace")
        try:
            return float(retry_after) if retry_after else (1.0 if refused else 0.0)
        except ValueError:
            return 1.0

    async def _stream(self, o: Outcome, r: aiohttp.ClientResponse) -> None:
        cut = self.rng.randint(1, 6) if o.kind == "cancel" else None
        chunks = 0
        async for raw in r.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                o.result = "ok"
                return
            chunk = json.loads(payload)
            if isinstance(chunk, dict) and "error" in chunk:
                o.code = error_shape(chunk)
                o.result = "failed_clean" if o.code else "unclean"
                o.detail = payload[:300]
                return
            _usage(o, chunk.get("usage") if isinstance(chunk, dict) else None)
            chunks += 1
            if cut is not None and chunks >= cut:
                r.close()  # the client goes away mid-stream
                o.result = "cancelled"
                return
        o.result, o.detail = "unclean", f"stream cut after {chunks} chunks, no [DONE]"
