"""POST /v1/chat/completions: messages through the model's chat template, one prompt, `n`
choices; one JSON body, or a stream of `chat.completion.chunk`s."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmd.engine import messages as m
from llmd.models import Model
from llmd.protocol import ChatCompletionRequest, chat_logprobs, envelope, now
from llmd.record import RequestRecord
from llmd.serving.base import Choice, Run, ServingBase

CHAT_CHUNK = "chat.completion.chunk"


class ServingChat(ServingBase[ChatCompletionRequest]):
    async def respond(
        self,
        request: web.Request,
        req: ChatCompletionRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.model, record.stream = model.name, bool(req.stream)
        prompt = self.chat_prompt(req, model)
        self.log_prompts("chat prompt", prompt)
        logprobs = req.logprobs_asked()
        ereq = self.engine_request(req, model, prompt, logprobs, record)
        name = req.model or model.name
        id_, created = f"chatcmpl-{ereq.id}", now()
        run = await self.submit(model, [ereq], req.n, record)
        try:
            if req.stream:
                return await self._stream(request, req, run, id_, name, created)
            choices = await run.collect([Choice() for _ in range(req.n)])
        finally:
            run.close()
        body_choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": chat_logprobs(c.logprobs) if logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ]
        return web.json_response(
            envelope("chat.completion", id_, name, created, body_choices, True, run.usage())
        )

    async def _stream(
        self,
        request: web.Request,
        req: ChatCompletionRequest,
        run: Run,
        id_: str,
        name: str,
        created: int,
    ) -> web.StreamResponse:
        with_usage = req.include_usage()

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return envelope(CHAT_CHUNK, id_, name, created, [choice], with_usage)

        def chunks(index: int, delta: m.Delta) -> list[dict[str, Any]]:
            out = []
            if delta.text or delta.logprobs:
                lp = chat_logprobs(delta.logprobs) if delta.logprobs else None
                out.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {"content": delta.text},
                            "logprobs": lp,
                            "finish_reason": None,
                        }
                    )
                )
            if delta.finish_reason is not None:
                out.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": delta.finish_reason,
                        }
                    )
                )
            return out

        opening = [
            chunk(
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
            for i in range(req.n)
        ]

        def usage_chunk() -> dict[str, Any]:
            return envelope(CHAT_CHUNK, id_, name, created, [], True, run.usage())

        return await self.stream(request, run, opening, chunks, usage_chunk if with_usage else None)
