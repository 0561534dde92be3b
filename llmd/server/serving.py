"""Chat, text completions and embeddings: an API request in, engine requests out, OpenAI
shapes back.

The engine knows nothing of HTTP; the handlers know nothing of the engine. This layer turns
a validated request into `GenerateRequest`s, follows their events, and writes either one JSON
body or an SSE stream. Whatever way the request ends (done, error, client gone, timeout), its
engine sequences are cancelled in `finally`, so a vanished client frees its slot at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from llmd.engine import messages as m
from llmd.engine.client import RequestHandle
from llmd.errors import APIError, InvalidRequest, ServiceUnavailable
from llmd.models import Model
from llmd.protocol import (
    MAX_GRAMMAR_CHARS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Sampling,
    chat_logprobs,
    completion_logprobs,
    embeddings_body,
    envelope,
    now,
    usage,
)
from llmd.server.accounting import RequestRecord, finish_stream
from llmd.settings import Settings

log = logging.getLogger("llmd.api")
_T = TypeVar("_T")
CHAT_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"


@dataclass
class Choice:
    text: str = ""
    logprobs: list[m.TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Run:
    """The engine requests behind one API request (one per prompt), followed together."""

    def __init__(
        self,
        model: Model,
        handles: list[RequestHandle],
        n: int,
        timeout_s: float,
        record: RequestRecord,
    ) -> None:
        self.model = model
        self.record = record
        self.deadline = time.monotonic() + timeout_s
        self.handles = handles
        self.n = n
        self.started: list[m.Started] = []
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self._streams = [h.events() for h in handles]

    async def start(self) -> None:
        """Wait until every prompt is tokenized and accepted (or raise its 4xx/5xx)."""
        for stream in self._streams:
            first = await self._within_deadline(anext(stream))
            assert isinstance(first, m.Started)
            self.started.append(first)
            self.prompt_tokens += first.prompt_tokens
        self.record.prompt_tokens = self.prompt_tokens

    async def deltas(self) -> AsyncIterator[tuple[int, m.Delta]]:
        """(choice index, delta) across all prompts, as they arrive."""
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(i: int, stream: AsyncIterator[Any]) -> None:
            try:
                async for event in stream:
                    await queue.put((i, event))
                await queue.put((i, None))
            except Exception as exc:  # noqa: BLE001 - handed over to the consumer
                await queue.put((i, exc))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            open_streams = len(tasks)
            while open_streams:
                i, event = await self._within_deadline(queue.get())
                if event is None:
                    open_streams -= 1
                elif isinstance(event, Exception):
                    raise event
                elif isinstance(event, m.Admitted):
                    self.cached_tokens += event.cached_tokens
                    self.record.cached_tokens = self.cached_tokens
                    self.record.admitted = self.record.admitted or time.monotonic()
                elif isinstance(event, m.Delta):
                    self.completion_tokens += event.tokens
                    self.record.completion_tokens = self.completion_tokens
                    if self.record.answer_parts is not None:
                        self.record.answer_parts.append(event.text)
                    if event.tokens and self.record.first_token is None:
                        self.record.first_token = time.monotonic()
                    yield i * self.n + event.index, event
        finally:
            for task in tasks:
                task.cancel()

    async def _within_deadline(self, awaitable: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(awaitable, self.deadline - time.monotonic())
        except TimeoutError:
            raise APIError(
                "The request took longer than the server's request timeout.",
                code="timeout",
                status=504,
            ) from None

    def close(self) -> None:
        for handle in self.handles:
            self.model.process.cancel(handle)

    def usage(self) -> dict[str, Any]:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


def _sampling(req: _Sampling, model: Model) -> m.SamplingParams:
    d = model.settings.sampling

    def pick(value: Any, default: Any, builtin: Any) -> Any:
        return value if value is not None else default if default is not None else builtin

    return m.SamplingParams(
        temperature=pick(req.temperature, d.temperature, 1.0),
        top_p=pick(req.top_p, d.top_p, 1.0),
        top_k=pick(req.top_k, d.top_k, 0),
        min_p=pick(req.min_p, d.min_p, 0.0),
        repeat_penalty=pick(req.repeat_penalty, d.repeat_penalty, 1.0),
        frequency_penalty=pick(req.frequency_penalty, d.frequency_penalty, 0.0),
        presence_penalty=pick(req.presence_penalty, d.presence_penalty, 0.0),
        seed=req.seed,
        logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()},
        grammar=_grammar(req),
    )


def _grammar(req: _Sampling) -> m.Grammar | None:
    """The grammar a request holds its output to, if any (compiled in the model process)."""
    if req.grammar is not None:
        return m.Grammar("gbnf", req.grammar, param="grammar")
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema and fmt.json_schema.schema_ is not None:
        param = "response_format.json_schema.schema"
        source = json.dumps(fmt.json_schema.schema_)
        if len(source) > MAX_GRAMMAR_CHARS:
            raise InvalidRequest(
                f"The JSON schema is {len(source)} characters long; at most "
                f"{MAX_GRAMMAR_CHARS} are supported.",
                param=param,
            )
        return m.Grammar("json_schema", source, param=param)
    return m.Grammar("json_object")


def _engine_request(
    req: _Sampling,
    model: Model,
    prompt: str | list[int],
    max_tokens: int | None,
    logprobs: int | None,
    record: RequestRecord,
    echo: bool = False,
) -> m.GenerateRequest:
    n_vocab = model.process.info.n_vocab if model.process.info else 0
    for token in req.logit_bias or {}:
        if int(token) >= n_vocab:
            raise InvalidRequest(
                f"logit_bias token {token} is outside the vocabulary (size {n_vocab})",
                param="logit_bias",
            )
    _check_tokens(prompt, n_vocab, "prompt")
    return m.GenerateRequest(
        id=uuid.uuid4().hex,
        prompt=prompt,
        sampling=_sampling(req, model),
        max_tokens=max_tokens if max_tokens is not None else model.settings.sampling.max_tokens,
        n=req.n,
        stop=req.stop_list(),
        logprobs=logprobs,
        ignore_eos=req.ignore_eos,
        return_prompt_text=echo and isinstance(prompt, list),
        # Fair sharing: a busy engine admits waiting requests round-robin by key (by client
        # address without keys).
        tenant=record.key_name or record.client,
        weight=record.weight,
    )


def _check_tokens(prompt: str | list[int], n_vocab: int, param: str) -> None:
    if isinstance(prompt, list) and any(t < 0 or t >= n_vocab for t in prompt):
        raise InvalidRequest(f"token ids must be in [0, {n_vocab})", param=param)


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
                raise APIError(
                    "The request took longer than the server's request timeout.",
                    code="timeout",
                    status=504,
                )
            for task in done:
                index, _handle = running.pop(task)
                results[index] = task.result()
    finally:
        for task, (_, handle) in running.items():
            task.cancel()
            model.process.cancel(handle)
    return results


async def _submit(
    model: Model,
    reqs: list[m.GenerateRequest],
    n: int,
    timeout_s: float,
    record: RequestRecord,
) -> Run:
    handles: list[RequestHandle] = []
    try:
        for req in reqs:
            handles.append(model.process.submit(req))
    except Exception:
        for handle in handles:
            model.process.cancel(handle)
        raise
    run = Run(model, handles, n, timeout_s, record)
    try:
        await run.start()
    except BaseException:
        run.close()
        raise
    return run


async def _sse(resp: web.StreamResponse, payload: dict[str, Any] | str) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    await resp.write(f"data: {data}\n\n".encode("utf-8", "replace"))


async def _start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    return resp


class Serving:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def chat(
        self,
        request: web.Request,
        req: ChatCompletionRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.model, record.stream = model.name, bool(req.stream)
        messages = []
        for msg in req.messages:
            entry: dict[str, Any] = {"role": msg.role, "content": msg.text()}
            if msg.name:
                entry["name"] = msg.name
            messages.append(entry)
        prompt = model.chat_template().render(messages)
        if self.settings.server.log_prompts:
            log.info("chat prompt: %r", prompt)
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        ereq = _engine_request(req, model, prompt, max_tokens, logprobs, record)
        name = req.model or model.name
        id_, created = f"chatcmpl-{ereq.id}", now()
        run = await _submit(model, [ereq], req.n, self.settings.server.request_timeout_s, record)
        try:
            if req.stream:
                return await self._chat_stream(request, req, run, id_, name, created)
            choices = [Choice() for _ in range(req.n)]
            async for index, delta in run.deltas():
                _collect(choices[index], delta)
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

    async def _chat_stream(
        self,
        request: web.Request,
        req: ChatCompletionRequest,
        run: Run,
        id_: str,
        name: str,
        created: int,
    ) -> web.StreamResponse:
        resp = await _start_sse(request)
        with_usage = req.include_usage()

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return envelope(CHAT_CHUNK, id_, name, created, [choice], with_usage)

        for i in range(req.n):
            await _sse(
                resp,
                chunk(
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ),
            )
        try:
            async for index, delta in run.deltas():
                if delta.text or delta.logprobs:
                    lp = chat_logprobs(delta.logprobs) if delta.logprobs else None
                    await _sse(
                        resp,
                        chunk(
                            {
                                "index": index,
                                "delta": {"content": delta.text},
                                "logprobs": lp,
                                "finish_reason": None,
                            }
                        ),
                    )
                if delta.finish_reason is not None:
                    await _sse(
                        resp,
                        chunk(
                            {
                                "index": index,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": delta.finish_reason,
                            }
                        ),
                    )
        except APIError as exc:
            run.record.error_code = exc.code or exc.type
            return await _stream_error(request, resp, exc)
        if with_usage:
            await _sse(resp, envelope(CHAT_CHUNK, id_, name, created, [], True, run.usage()))
        await finish_stream(request)
        await _sse(resp, "[DONE]")
        await resp.write_eof()
        return resp

    async def completions(
        self,
        request: web.Request,
        req: CompletionRequest,
        model: Model,
        record: RequestRecord,
    ) -> web.StreamResponse:
        record.model, record.stream = model.name, bool(req.stream)
        if req.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        prompts = req.prompts()
        if self.settings.server.log_prompts:
            log.info("completion prompts: %r", prompts)
        ereqs = [
            _engine_request(req, model, p, req.max_tokens, req.logprobs, record, req.echo)
            for p in prompts
        ]
        name = req.model or model.name
        id_, created = f"cmpl-{ereqs[0].id}", now()
        run = await _submit(model, ereqs, req.n, self.settings.server.request_timeout_s, record)
        try:
            echoes = [
                (s.prompt_text if s.prompt_text is not None else str(p)) if req.echo else ""
                for s, p in zip(run.started, prompts, strict=True)
            ]
            if req.stream:
                return await self._completion_stream(request, req, run, id_, name, created, echoes)
            choices = [Choice(text=echoes[i // req.n]) for i in range(len(prompts) * req.n)]
            async for index, delta in run.deltas():
                _collect(choices[index], delta)
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

    async def _completion_stream(
        self,
        request: web.Request,
        req: CompletionRequest,
        run: Run,
        id_: str,
        name: str,
        created: int,
        echoes: list[str],
    ) -> web.StreamResponse:
        resp = await _start_sse(request)
        with_usage = req.include_usage()
        offsets = [len(echoes[i // req.n]) for i in range(len(echoes) * req.n)]

        def chunk(index: int, text: str, lp: Any, finish: str | None) -> dict[str, Any]:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
            return envelope(TEXT_COMPLETION, id_, name, created, [choice], with_usage)

        for index in range(len(offsets)):
            if echo := echoes[index // req.n]:
                await _sse(resp, chunk(index, echo, None, None))
        try:
            async for index, delta in run.deltas():
                lp = None
                if delta.logprobs and req.logprobs is not None:
                    lp = completion_logprobs(delta.logprobs, offsets[index])
                offsets[index] += len(delta.text)
                if delta.text or lp or delta.finish_reason:
                    await _sse(resp, chunk(index, delta.text, lp, delta.finish_reason))
        except APIError as exc:
            run.record.error_code = exc.code or exc.type
            return await _stream_error(request, resp, exc)
        if with_usage:
            await _sse(resp, envelope(TEXT_COMPLETION, id_, name, created, [], True, run.usage()))
        await finish_stream(request)
        await _sse(resp, "[DONE]")
        await resp.write_eof()
        return resp

    async def embeddings(
        self, req: EmbeddingRequest, model: Model, record: RequestRecord
    ) -> web.Response:
        record.model = model.name
        info = model.process.info
        n_vocab, n_embd = (info.n_vocab, info.n_embd) if info else (0, 0)
        if req.dimensions is not None and req.dimensions > n_embd:
            raise InvalidRequest(
                f"dimensions must be at most {n_embd}: model '{model.name}' makes embeddings of "
                f"{n_embd} dimensions",
                param="dimensions",
            )
        inputs = req.inputs()
        if self.settings.server.log_prompts:
            log.info("embedding inputs: %r", inputs)
        reqs = []
        for text in inputs:
            _check_tokens(text, n_vocab, "input")
            reqs.append(
                m.GenerateRequest(
                    id=uuid.uuid4().hex,
                    prompt=text,
                    sampling=m.SamplingParams(),
                    embed=True,
                    tenant=record.key_name or record.client,
                    weight=record.weight,
                )
            )
        results = await _embed_all(model, reqs, self.settings.server.request_timeout_s)
        record.prompt_tokens = sum(tokens for tokens, _ in results)
        body = embeddings_body(
            [vector for _, vector in results],
            req.model or model.name,
            record.prompt_tokens,
            req.encoding_format,
            req.dimensions,
        )
        return web.json_response(body)


async def _stream_error(
    request: web.Request, resp: web.StreamResponse, exc: APIError
) -> web.StreamResponse:
    """Headers are gone already: report the failure in the stream, as OpenAI does."""
    log.warning("stream ended by error: %s", exc.message)
    await finish_stream(request)
    await _sse(resp, exc.body())
    await resp.write_eof()
    return resp


def _collect(choice: Choice, delta: m.Delta) -> None:
    choice.text += delta.text
    if delta.logprobs:
        choice.logprobs.extend(delta.logprobs)
    if delta.finish_reason is not None:
        choice.finish_reason = delta.finish_reason
