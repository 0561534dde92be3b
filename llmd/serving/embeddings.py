"""POST /v1/embeddings: each input read by the engine for its pooled vector, a slot's worth
of inputs at a time."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

from llmd.cache.entry import decode_embedding, encode_embedding
from llmd.engine import messages as m
from llmd.engine.client import RequestHandle
from llmd.errors import ServiceUnavailable
from llmd.models import Model
from llmd.protocol import EmbeddingRequest, embeddings_body
from llmd.record import RequestRecord
from llmd.sampling import resolve
from llmd.serving.base import ServingBase, request_timeout, tenant


class ServingEmbeddings(ServingBase[EmbeddingRequest]):
    async def respond(
        self,
        request: web.Request,
        req: EmbeddingRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.model = model.name
        self.check_dimensions(req.dimensions, model)
        n_vocab = self.vocabulary(model)
        inputs = req.inputs()
        self.log_prompts("embedding inputs", inputs)
        reqs = []
        for text in inputs:
            self.check_tokens(text, n_vocab, "input")
            reqs.append(
                m.GenerateRequest(
                    id=uuid.uuid4().hex,
                    prompt=text,
                    sampling=_NO_SAMPLING,
                    embed=True,
                    tenant=tenant(record),
                    weight=record.weight,
                )
            )
        results = await self._cached(record, model, reqs)
        record.prompt_tokens = sum(tokens for tokens, _ in results)
        body = embeddings_body(
            [vector for _, vector in results],
            req.model or model.name,
            record.prompt_tokens,
            req.encoding_format,
            req.dimensions,
        )
        return web.json_response(body)

    async def _cached(
        self, record: RequestRecord, model: Model, reqs: list[m.GenerateRequest]
    ) -> list[tuple[int, bytes]]:
        """Every input's (prompt tokens, vector): those the response cache holds from it, the
        rest from the engine (and kept). Inputs are filed one by one, so a document embedded
        again in another batch is found too; the request is a hit when every input was."""
        plans = [await self.cache.plan(record, model, [req]) for req in reqs]
        usable = [p for p in plans if p is not None]
        found: list[bytes | None] | None = None
        if usable and len(usable) == len(reqs) and record.cache_read:
            found = await self.cache.get_many(usable[0].scope, [p.key for p in usable])
        known: dict[int, tuple[int, bytes]] = {}
        for i, data in enumerate(found or []):
            if data is not None:
                try:
                    known[i] = decode_embedding(data)
                except (ValueError, KeyError, TypeError):
                    pass  # unreadable: computed again, and replaced
        result = "bypass" if found is None else "hit" if len(known) == len(reqs) else "miss"
        self.cache.count(record, result)
        missing = [i for i in range(len(reqs)) if i not in known]
        timeout_s = self.settings.server.request_timeout_s
        computed = await _embed_all(model, [reqs[i] for i in missing], timeout_s)
        for i, (tokens, vector) in zip(missing, computed, strict=True):
            known[i] = (tokens, vector)
            plan = plans[i]
            if plan is not None and record.cache_write:
                await self.cache.put(plan.scope, plan.key, encode_embedding(tokens, vector))
        return [known[i] for i in range(len(reqs))]


# An embedding samples nothing; its request still carries complete parameters (the built-ins).
_NO_SAMPLING = resolve()


async def _embed_one(handle: RequestHandle) -> tuple[int, bytes]:
    """(prompt tokens, vector) of one input, once the engine has read it."""
    tokens, vector = 0, b""
    async for event in handle.events():
        if isinstance(event, m.Started):
            tokens = event.prompt_tokens
        elif isinstance(event, m.Embedding):
            vector = event.vector
    return tokens, vector


async def _embed_all(
    model: Model, reqs: list[m.GenerateRequest], timeout_s: float
) -> list[tuple[int, bytes]]:
    """Every input's (prompt tokens, vector), in order. Inputs go to the engine a slot's
    worth at a time: a request with 500 inputs must not fill the queue (and be refused) when
    the model is idle, nor crowd out other clients' requests while it runs."""
    window = max(1, model.process.options.load.parallel)
    deadline = time.monotonic() + timeout_s
    results: list[tuple[int, bytes]] = [(0, b"")] * len(reqs)
    running: dict[asyncio.Task[tuple[int, bytes]], tuple[int, RequestHandle]] = {}
    queued = iter(enumerate(reqs))
    follow = next(queued, None)
    try:
        while follow is not None or running:
            while follow is not None and len(running) < window:
                try:
                    handle = model.process.submit(follow[1])
                except ServiceUnavailable:
                    if not running:
                        raise
                    break  # busy with other clients' work: wait for one of ours to end
                running[asyncio.create_task(_embed_one(handle))] = (follow[0], handle)
                follow = next(queued, None)
            done, _ = await asyncio.wait(
                running, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise request_timeout()
            for task in done:
                index, _handle = running.pop(task)
                results[index] = task.result()
    finally:
        for task, (_, handle) in running.items():
            task.cancel()
            model.process.cancel(handle)
    return results
