"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, translated onto
chat completions (`MessagesRequest.to_chat`, llmd/protocol/anthropic.py) and answered by the
one chat path (`ServingChat.answer`); one `message` body, or Anthropic's named SSE events.

A stream is `message_start` (the message with no content yet), `ping`, then per content
block `content_block_start`, its `content_block_delta`s (`text_delta`, or `input_json_delta`
for a tool_use block's input) and `content_block_stop`, then `message_delta` (stop_reason,
stop_sequence, the final usage) and `message_stop`. While the prompt is still being read,
a `ping` goes out every PING_S seconds; an error after the headers is an `error` event in
Anthropic's error shape. Blocks are the same as the whole answer's: a text block only for
text that is not empty (its trailing whitespace dropped when a tool_use block follows:
llmd/serving/answer.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from llmd.engine import messages as m
from llmd.errors import APIError, InvalidRequest, anthropic_error
from llmd.models import Model
from llmd.protocol.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    message_id,
    renamed,
    stop_reason,
    tool_input,
    tool_use_id,
    usage,
)
from llmd.record import RequestRecord, get_record
from llmd.serving.answer import Answer
from llmd.serving.base import ServingBase, request_timeout
from llmd.serving.chat import ServingChat
from llmd.serving.sse import EventStream
from llmd.serving.toolcalls import CallArguments, CallStart, Content, Piece
from llmd.settings_provider import SettingsProvider

PING_S = 10.0
"""A `ping` this often while the prompt is read (a long one can take a while), so proxies and
clients that time out an idle stream keep it."""


class ServingMessages(ServingBase[MessagesRequest]):
    def __init__(self, provider: SettingsProvider, chat: ServingChat) -> None:
        super().__init__(provider, chat.cache)
        self.chat = chat

    async def respond(
        self, request: web.Request, req: MessagesRequest, model: Model, record: RequestRecord
    ) -> web.StreamResponse:
        name = req.model or model.name
        try:
            # Anthropic's max_tokens is a ceiling: the room the context has is used instead
            # of refusing (stop_reason "model_context_window_exceeded" when it runs out).
            answer = await self.chat.answer(req.to_chat(), model, record, up_to_room=True)
        except InvalidRequest as exc:  # named in the chat request's terms: in ours instead
            raise renamed(exc) from None
        try:
            if req.stream:
                return await self._stream(request, answer, name)
            async for _ in answer.pieces():
                pass
        finally:
            answer.run.close()
        content: list[dict[str, Any]] = []
        text = answer.text
        if text:
            content.append({"type": "text", "text": text})
        for call in answer.calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(),
                    "name": call.name,
                    "input": tool_input(call.arguments),
                }
            )
        return web.json_response(_message(answer, message_id(), name, content, final=True))

    async def _stream(self, request: web.Request, answer: Answer, name: str) -> web.StreamResponse:
        sse = await EventStream.open(request)
        id_ = message_id()
        start = _message(answer, id_, name, [], final=False)
        await sse.send({"type": "message_start", "message": start}, event="message_start")
        await sse.send({"type": "ping"}, event="ping")
        blocks = _Blocks(sse)
        pieces = answer.pieces()
        first: asyncio.Future[Piece | None] = asyncio.ensure_future(anext(pieces, None))
        try:
            while not (await asyncio.wait({first}, timeout=PING_S))[0]:
                await sse.send({"type": "ping"}, event="ping")
            piece = first.result()
            if piece is not None:
                await blocks.add(piece)
                async for piece in pieces:
                    await blocks.add(piece)
            await blocks.end()
        except APIError as exc:
            return await _fail(sse, exc)
        finally:
            first.cancel()
        final = _message(answer, id_, name, [], final=True)
        delta = {"stop_reason": final["stop_reason"], "stop_sequence": final["stop_sequence"]}
        out = final["usage"]
        await sse.send(
            {"type": "message_delta", "delta": delta, "usage": out}, event="message_delta"
        )
        return await sse.close({"type": "message_stop"}, "message_stop")


class ServingCountTokens(ServingBase[CountTokensRequest]):
    """The prompt that /v1/messages would run, written by the model's template and counted by
    its tokenizer in the model process (a `count_only` engine request: never admitted, no
    slot), so the count is exactly the prompt's length in the answer's usage."""

    async def respond(
        self, request: web.Request, req: CountTokensRequest, model: Model, record: RequestRecord
    ) -> web.StreamResponse:
        record.model = model.name  # no tokens are recorded: nothing was generated or computed
        chat = req.to_chat()
        try:
            prompt = self.chat_prompt(chat, model)
            ereq = self.engine_request(chat, model, prompt, None, record)
        except InvalidRequest as exc:
            raise renamed(exc) from None
        ereq.count_only = True
        handle = model.process.submit(ereq)
        deadline = time.monotonic() + self.settings.server.request_timeout_s
        try:
            events = handle.events()
            started = await asyncio.wait_for(anext(events), deadline - time.monotonic())
        except TimeoutError:
            raise request_timeout() from None
        except InvalidRequest as exc:
            raise renamed(exc) from None
        finally:
            model.process.cancel(handle)
        assert isinstance(started, m.Started)
        return web.json_response({"input_tokens": started.prompt_tokens})


def _message(
    answer: Answer, id_: str, name: str, content: list[dict[str, Any]], final: bool
) -> dict[str, Any]:
    """The message: as `message_start` sends it (no stop reason yet; the prompt's tokens, its
    cache reads not known before it is admitted), or once the answer is over."""
    run = answer.run
    reason = stop = None
    counts = usage(run.prompt_tokens, 0, 0)
    if final:
        reason = stop_reason(answer.finish_reason, answer.made_calls, answer.stop_sequence)
        if answer.out_of_room:
            reason = "model_context_window_exceeded"
        stop = answer.stop_sequence if reason == "stop_sequence" else None
        counts = usage(run.prompt_tokens, run.completion_tokens, run.cached_tokens)
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop,
        "usage": counts,
    }


class _Blocks:
    """An answer's pieces as content block events, each block started, fed and stopped."""

    def __init__(self, sse: EventStream) -> None:
        self.sse = sse
        self.index = -1
        self.open: str | None = None

    async def add(self, piece: Piece) -> None:
        if isinstance(piece, Content):
            await self._text_out(piece.text)
        elif isinstance(piece, CallStart):
            await self._start({"type": "tool_use", "id": tool_use_id(), "name": piece.name})
        elif isinstance(piece, CallArguments) and piece.text:
            await self._delta({"type": "input_json_delta", "partial_json": piece.text})

    async def end(self) -> None:
        await self._stop()

    async def _text_out(self, text: str) -> None:
        if self.open != "text":
            await self._start({"type": "text", "text": ""})
        await self._delta({"type": "text_delta", "text": text})

    async def _start(self, block: dict[str, Any]) -> None:
        await self._stop()
        self.index += 1
        self.open = block["type"]
        if block["type"] == "tool_use":
            block["input"] = {}
        event = {"type": "content_block_start", "index": self.index, "content_block": block}
        await self.sse.send(event, event="content_block_start")

    async def _delta(self, delta: dict[str, Any]) -> None:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        await self.sse.send(event, event="content_block_delta")

    async def _stop(self) -> None:
        if self.open is not None:
            event = {"type": "content_block_stop", "index": self.index}
            await self.sse.send(event, event="content_block_stop")
            self.open = None


async def _fail(sse: EventStream, exc: APIError) -> web.StreamResponse:
    """Headers are gone: the error is an `error` event, in Anthropic's shape."""
    request_id = get_record(sse.request).request_id
    _, body = anthropic_error(exc.status, exc.message, exc.param, request_id)
    return await sse.fail(exc, "error", body)
