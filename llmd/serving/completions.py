"""POST /v1/completions: raw prompts (text or token ids), one engine request each, `n`
choices per prompt; one JSON body, or a stream of `text_completion` chunks."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmd.engine import messages as m
from llmd.models import Model
from llmd.protocol import CompletionRequest, completion_logprobs, envelope, now
from llmd.record import RequestRecord
from llmd.serving.base import Choice, Run, ServingBase

TEXT_COMPLETION = "text_completion"


class ServingCompletions(ServingBase[CompletionRequest]):
    async def respond(
        self,
        request: web.Request,
        req: CompletionRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.model, record.stream = model.name, bool(req.stream)
        prompts = req.prompts()
        self.log_prompts("completion prompts", prompts)
        ereqs = [
            self.engine_request(req, model, p, req.logprobs, record, req.echo) for p in prompts
        ]
        name = req.model or model.name
        id_, created = f"cmpl-{ereqs[0].id}", now()
        run = await self.submit(model, ereqs, req.n, record)
        try:
            echoes = [
                (s.prompt_text if s.prompt_text is not None else str(p)) if req.echo else ""
                for s, p in zip(run.started, prompts, strict=True)
            ]
            if req.stream:
                return await self._stream(request, req, run, id_, name, created, echoes)
            choices = await run.collect(
                [Choice(text=echoes[i // req.n]) for i in range(len(prompts) * req.n)]
            )
        finally:
            run.close()
        body_choices = [
            {
                "index": i,
                "text": c.text,
                "logprobs": (
                    completion_logprobs(c.logprobs, len(echoes[i // req.n]))
                    if req.logprobs is not None
                    else None
                ),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ]
        return web.json_response(
            envelope(TEXT_COMPLETION, id_, name, created, body_choices, True, run.usage())
        )

    async def _stream(
        self,
        request: web.Request,
        req: CompletionRequest,
        run: Run,
        id_: str,
        name: str,
        created: int,
        echoes: list[str],
    ) -> web.StreamResponse:
        with_usage = req.include_usage()
        offsets = [len(echoes[i // req.n]) for i in range(len(echoes) * req.n)]

        def chunk(index: int, text: str, lp: Any, finish: str | None) -> dict[str, Any]:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
            return envelope(TEXT_COMPLETION, id_, name, created, [choice], with_usage)

        def chunks(index: int, delta: m.Delta) -> list[dict[str, Any]]:
            lp = None
            if delta.logprobs and req.logprobs is not None:
                lp = completion_logprobs(delta.logprobs, offsets[index])
            offsets[index] += len(delta.text)
            if delta.text or lp or delta.finish_reason:
                return [chunk(index, delta.text, lp, delta.finish_reason)]
            return []

        opening = [
            chunk(index, echo, None, None)
            for index in range(len(offsets))
            if (echo := echoes[index // req.n])
        ]

        def usage_chunk() -> dict[str, Any]:
            return envelope(TEXT_COMPLETION, id_, name, created, [], True, run.usage())

        return await self.stream(request, run, opening, chunks, usage_chunk if with_usage else None)
