"""POST /v1/chat/completions: messages through the model's chat template, one prompt, `n`
choices; one JSON body, or a stream of `chat.completion.chunk`s."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from llmd.engine import messages as m
from llmd.models import Model
from llmd.protocol import ChatCompletionRequest, chat_logprobs, envelope, now
from llmd.record import RequestRecord
from llmd.serving.answer import Answer
from llmd.serving.base import Choice, Run, ServingBase
from llmd.serving.toolcalls import CallParser, answer_message, finish_reason, piece_delta

CHAT_CHUNK = "chat.completion.chunk"


class ServingChat(ServingBase[ChatCompletionRequest]):
    async def respond(
        self,
        request: web.Request,
        req: ChatCompletionRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        logprobs = req.logprobs_asked()
        name = req.model or model.name
        id_, created = f"chatcmpl-{uuid.uuid4().hex}", now()
        run = await self.start(req, model, record)
        try:
            if req.stream:
                return await self._stream(request, req, run, id_, name, created)
            choices = await run.collect([Choice() for _ in range(req.n)])
        finally:
            run.close()
        use = req.tool_use
        body_choices = []
        for i, c in enumerate(choices):
            message, calls = answer_message(c.text, use)
            legacy = use is not None and use.legacy
            body_choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": chat_logprobs(c.logprobs) if logprobs is not None else None,
                    "finish_reason": finish_reason(c.finish_reason, calls, legacy),
                }
            )
        return web.json_response(
            envelope("chat.completion", id_, name, created, body_choices, True, run.usage())
        )

    async def start(
        self,
        req: ChatCompletionRequest,
        model: Model,
        record: RequestRecord,
        up_to_room: bool = False,
    ) -> Run:
        """The conversation written by the model's template and handed to the engine: the
        one way to the model for chat completions and the APIs translated onto it.
        `up_to_room`: the token limit is a ceiling, cut to the context's room."""
        record.model, record.stream = model.name, bool(req.stream)
        prompt = self.chat_prompt(req, model)
        self.log_prompts("chat prompt", prompt.text)
        logprobs = req.logprobs_asked()
        ereq = self.engine_request(req, model, prompt, logprobs, record, up_to_room=up_to_room)
        return await self.submit(model, [ereq], req.n, record)

    async def answer(
        self,
        req: ChatCompletionRequest,
        model: Model,
        record: RequestRecord,
        up_to_room: bool = False,
    ) -> Answer:
        """A chat request with one answer (`n` = 1), started and read as pieces: for the APIs
        translated onto chat completions. The caller closes `answer.run`."""
        run = await self.start(req, model, record, up_to_room)
        return Answer(
            run,
            req.tool_use,
            client_stops=req.client_stops(),
            asked_max_tokens=req.completion_limit(),
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
        use = req.tool_use
        legacy = use is not None and use.legacy
        # Calls are read out of the text as it comes, per choice.
        parsers = None
        if use is not None and use.calls_possible:
            parsers = [CallParser(text_allowed=not use.required) for _ in range(req.n)]

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return envelope(CHAT_CHUNK, id_, name, created, [choice], with_usage)

        def chunks(index: int, delta: m.Delta) -> list[dict[str, Any]]:
            if parsers is None:
                deltas = [{"content": delta.text}] if delta.text else []
            else:
                parser = parsers[index]
                pieces = parser.feed(delta.text)
                if delta.finish_reason is not None:
                    pieces += parser.finish()
                deltas = [piece_delta(p, legacy) for p in pieces]
            lp = chat_logprobs(delta.logprobs) if delta.logprobs else None
            if lp is not None and not deltas:
                deltas = [{"content": ""} if parsers is None else {}]
            out = [
                chunk(
                    {
                        "index": index,
                        "delta": d,
                        "logprobs": lp if i == 0 else None,
                        "finish_reason": None,
                    }
                )
                for i, d in enumerate(deltas)
            ]
            if delta.finish_reason is not None:
                calls = parsers is not None and parsers[index].made_calls
                reason = finish_reason(delta.finish_reason, calls, legacy)
                out.append(
                    chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
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
