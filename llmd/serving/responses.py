"""POST /v1/responses: OpenAI's Responses API on chat completions' serving.

The request becomes a chat request (`ResponsesRequest.to_chat`, with a previous response's
conversation before its input) and is answered by `ServingChat.answer`, the one way to the
model. Its pieces (text, calls) are written by `ResponseWriter` as the Response's output
items, and as the typed stream events the SDK reads (`response.created` ...
`response.completed`), numbered from 0. A whole (not streamed) response is the same writer
with its events dropped, so the two can never differ.

A response is stored (`store`, true by default, as OpenAI's) once complete, before its body or
its last event is sent, scoped to the key that made it (llmd/usage/responses.py keeps them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmd.errors import APIError, InvalidRequest
from llmd.models import Model, ModelManager
from llmd.protocol import ChatCompletionRequest
from llmd.protocol.response_items import new_id
from llmd.protocol.responses import ResponsesRequest, responses_error
from llmd.record import RequestRecord, get_record
from llmd.serving.answer import Answer
from llmd.serving.base import ServingBase
from llmd.serving.chat import ServingChat
from llmd.serving.sse import EventStream
from llmd.serving.toolcalls import CallArguments, CallStart, Content, Piece
from llmd.settings_provider import SettingsProvider
from llmd.usage.responses import RESPONSE_STORE, ResponseStore, StoredResponse

Event = dict[str, Any]
_EARLIER: web.RequestKey[tuple[list[dict[str, Any]], ChatCompletionRequest]] = web.RequestKey(
    "llmd_responses_earlier"
)
"""The previous response's conversation, loaded before the model is leased, and the request
translated with it."""
MAX_CONVERSATION_ITEMS = 10_000
"""Items a conversation may hold across follow-ups (as a body holds at most 20,000 objects:
llmd/body.py)."""


def error_code(exc: APIError) -> str:
    """A Response's `error.code` (OpenAI's few codes) for an error that ended it."""
    if exc.status == 429:
        return "rate_limit_exceeded"
    if exc.status == 400:
        return "invalid_prompt"
    return "server_error"


@dataclass
class ResponseWriter:
    """One Response, written a piece of the answer at a time: `feed` and `finish` return the
    stream events each step makes; `body` is the Response as it stands."""

    id: str
    model: str
    created_at: int
    echo: dict[str, Any]
    """The request's settings, repeated in the Response (ResponsesRequest.echo)."""
    output: list[dict[str, Any]] = field(default_factory=list)
    status: str = "in_progress"
    incomplete: str | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    completed_at: int | None = None
    _open: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The Response now. OpenAI's schema has `usage` and `user` as objects and strings,
        never null: they are left out until known (the SDK reads them as None)."""
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "completed_at": self.completed_at,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete} if self.incomplete is not None else None
            ),
            "model": self.model,
            "output": [dict(item) for item in self.output],
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "top_logprobs": 0,
            "truncation": "disabled",
            "max_tool_calls": None,
            "usage": self.usage,
            **self.echo,
        }
        return {k: v for k, v in body.items() if v is not None or k not in ("usage", "user")}

    def start(self) -> list[Event]:
        return [
            {"type": "response.created", "response": self.body()},
            {"type": "response.in_progress", "response": self.body()},
        ]

    def feed(self, piece: Piece) -> list[Event]:
        events: list[Event] = []
        if isinstance(piece, Content):
            if self._open is None or self._open["type"] != "message":
                events += self._close()
                events += self._open_message()
            events += self._text(piece.text)
        elif isinstance(piece, CallStart):
            events += self._close()
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": piece.id,
                "name": piece.name,
                "arguments": "",
            }
            events += self._add(item)
        elif isinstance(piece, CallArguments) and self._open is not None:
            self._open["arguments"] += piece.text
            events.append(self._at({"type": "response.function_call_arguments.delta"}, piece.text))
        return events

    def finish(self, answer: Answer) -> list[Event]:
        """The end of the answer: the open item closed, the Response complete (or
        incomplete: the output reached max_output_tokens, or the context's end)."""
        events: list[Event] = []
        if not self.output:  # an empty answer is still a message, with empty text
            events += self._open_message()
        length = answer.finish_reason == "length"
        events += self._close("incomplete" if length else "completed")
        run = answer.run
        self.usage = {
            "input_tokens": run.prompt_tokens,
            "input_tokens_details": {"cached_tokens": run.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": run.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": run.prompt_tokens + run.completion_tokens,
        }
        if length:
            self.status, self.incomplete = "incomplete", "max_output_tokens"
        else:
            self.status, self.completed_at = "completed", int(time.time())
        return events

    def last(self) -> Event:
        kind = "response.completed" if self.status == "completed" else "response.incomplete"
        return {"type": kind, "response": self.body()}

    def fail(self, exc: APIError) -> Event:
        """The Response ended by an error mid-stream, as `response.failed` carries it."""
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        self.status = "failed"
        self.error = {"code": error_code(exc), "message": exc.message}
        return {"type": "response.failed", "response": self.body()}

    # -- items -----------------------------------------------------------------------------

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.output.append(item)
        self._open = item
        added = {"type": "response.output_item.added", "output_index": len(self.output) - 1}
        return [{**added, "item": dict(item, content=[]) if "content" in item else dict(item)}]

    def _open_message(self) -> list[Event]:
        item: dict[str, Any] = {
            "id": new_id("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
        }
        events = self._add(item)
        part = dict(item["content"][0])
        events.append(self._at({"type": "response.content_part.added", "part": part}))
        return events

    def _text(self, delta: str) -> list[Event]:
        """`delta` written into the open message."""
        assert self._open is not None
        if not delta:
            return []
        self._open["content"][0]["text"] += delta
        return [self._at({"type": "response.output_text.delta", "logprobs": []}, delta)]

    def _at(self, event: Event, delta: str | None = None) -> Event:
        """An event about the open item: its id and index (and the content part's)."""
        assert self._open is not None
        event.update(item_id=self._open["id"], output_index=len(self.output) - 1)
        if self._open["type"] == "message":
            event["content_index"] = 0
        if delta is not None:
            event["delta"] = delta
        return event

    def _close(self, status: str = "completed") -> list[Event]:
        item, events = self._open, []
        if item is None:
            return []
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._at({"type": "response.output_text.done", "text": part["text"]}))
            events[-1]["logprobs"] = []
            events.append(self._at({"type": "response.content_part.done", "part": dict(part)}))
        else:
            done = {"type": "response.function_call_arguments.done"}
            events.append(self._at(done | {"name": item["name"], "arguments": item["arguments"]}))
        index = len(self.output) - 1
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        self._open = None
        return events


def numbered(events: list[Event], start: int) -> Iterator[Event]:
    for i, event in enumerate(events):
        event["sequence_number"] = start + i
        yield event


class ServingResponses(ServingBase[ResponsesRequest]):
    def __init__(self, provider: SettingsProvider, chat: ServingChat) -> None:
        super().__init__(provider, chat.cache)
        self.chat = chat

    async def serve(
        self, request: web.Request, req: ResponsesRequest, manager: ModelManager
    ) -> web.StreamResponse:
        """A previous response is looked up, and the request translated, before the model is
        leased: an unknown id or a bad conversation touches no model."""
        earlier: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            stored = await self._load(request, req.previous_response_id)
            earlier = stored.conversation
            if len(earlier) + len(req.items) > MAX_CONVERSATION_ITEMS:
                # Each follow-up validates the whole conversation on the event loop.
                raise InvalidRequest(
                    f"The conversation would hold more than {MAX_CONVERSATION_ITEMS} items. "
                    "Start a new one, sending what matters as input.",
                    param="previous_response_id",
                )
        request[_EARLIER] = earlier, req.to_chat(earlier)  # translated once, here
        return await super().serve(request, req, manager)

    async def respond(
        self,
        request: web.Request,
        req: ResponsesRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        earlier, chat = request[_EARLIER]
        sampling = chat.to_sampling_params(model.settings.sampling)
        echo = req.echo() | {"temperature": sampling.temperature, "top_p": sampling.top_p}
        writer = ResponseWriter(new_id("resp"), req.model or model.name, int(time.time()), echo)
        try:
            answer = await self.chat.answer(chat, model, record)
        except InvalidRequest as exc:
            raise responses_error(exc) from None
        try:
            if req.stream:
                return await self._stream(request, req, answer, writer, earlier)
            async for piece in answer.pieces():
                writer.feed(piece)
            writer.finish(answer)
        except InvalidRequest as exc:
            raise responses_error(exc) from None
        finally:
            answer.run.close()
        await self._save(request, req, writer, earlier)
        return web.json_response(writer.body())

    async def _stream(
        self,
        request: web.Request,
        req: ResponsesRequest,
        answer: Answer,
        writer: ResponseWriter,
        earlier: list[dict[str, Any]],
    ) -> web.StreamResponse:
        sse = await EventStream.open(request)
        sent = 0

        async def send(events: list[Event]) -> None:
            nonlocal sent
            for event in numbered(events, sent):
                await sse.send(event, event=event["type"])
            sent += len(events)

        await send(writer.start())
        try:
            async for piece in answer.pieces():
                await send(writer.feed(piece))
            await send(writer.finish(answer))
            await self._save(request, req, writer, earlier)  # its failure ends the stream too
        except APIError as exc:
            get_record(request).error_code = exc.code or exc.type
            (failed,) = numbered([writer.fail(exc)], sent)
            return await sse.close(failed, event=failed["type"])
        (last,) = numbered([writer.last()], sent)
        return await sse.close(last, event=last["type"])

    # -- storage ---------------------------------------------------------------------------

    @staticmethod
    def _store(request: web.Request) -> ResponseStore | None:
        return request.app.get(RESPONSE_STORE)

    async def _load(self, request: web.Request, response_id: str) -> StoredResponse:
        store = self._store(request)
        key = get_record(request).key_name
        stored = await store.load(response_id, key) if store is not None else None
        if stored is None:
            raise APIError(
                f"Previous response with id '{response_id}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
                status=404,
            )
        return stored

    async def _save(
        self,
        request: web.Request,
        req: ResponsesRequest,
        writer: ResponseWriter,
        earlier: list[dict[str, Any]],
    ) -> None:
        store = self._store(request)
        if req.store is False or store is None:
            return
        inputs = req.stored_input()
        body = writer.body()
        await store.save(
            StoredResponse(
                id=writer.id,
                key=get_record(request).key_name,
                created=float(writer.created_at),
                model=writer.model,
                body=body,
                input_items=inputs,
                conversation=[*earlier, *inputs, *body["output"]],
            )
        )
