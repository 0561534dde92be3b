"""What every endpoint that runs a model shares: the model lease, the checks that need the
model's facts, engine requests, and following their events.

A request is checked in three places, each holding what it alone can know:

- The protocol types (llmd/protocol/), when the body is parsed: everything that needs no
  facts about the model. Types, bounds, fields that exclude each other, options we do not
  support, a JSON schema too long to use.
- Here, with the model leased: the model exists and the key may use it (`serve`); token ids
  within its vocabulary (token prompts and inputs, `logit_bias`); `dimensions` within its
  embeddings' size; messages its chat template can render.
- The engine: in the model process (`Scheduler.submit`), what needs the tokenized prompt or
  the loaded model: prompt and output within the context, `n` within its slots, a grammar it
  can compile, no generation from an embedding-only model; in the daemon
  (`ModelProcess.submit`), the model ready and its queue not full.

The engine knows nothing of HTTP; the route handlers know nothing of the engine. Whatever way
a request ends (done, error, client gone, timeout), its engine sequences are cancelled in
`finally`, so a vanished client frees its slot at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web

from llmd.auth.middleware import authorize_model
from llmd.cache import Events, ResponseCache, cache_control
from llmd.engine import messages as m
from llmd.engine.client import RequestHandle
from llmd.errors import APIError, InvalidRequest
from llmd.models import Model, ModelManager
from llmd.protocol import ChatCompletionRequest, ModelRequest, SamplingRequest, usage
from llmd.record import RequestRecord, get_record
from llmd.serving.sse import EventStream
from llmd.serving.toolcalls import knows_tools, template_messages
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider
from llmd.templates import Prompt

log = logging.getLogger("llmd.api")
_T = TypeVar("_T")
R = TypeVar("R", bound=ModelRequest)


class ServingBase(Generic[R]):
    """One endpoint's serving: `serve` leases the model, `respond` (each endpoint's own)
    answers with it."""

    def __init__(self, provider: SettingsProvider, cache: ResponseCache) -> None:
        self._provider = provider
        self.cache = cache

    @property
    def settings(self) -> Settings:
        """The settings in force now (a reload replaces them in the provider)."""
        return self._provider.current

    async def serve(
        self, request: web.Request, req: R, manager: ModelManager
    ) -> web.StreamResponse:
        """Check the key may use the request's model; hold the model (loaded first if need
        be) until the response's last byte, answering the request with it."""
        entry = manager.resolve(req.model)
        authorize_model(request, entry.name, entry.settings.aliases)
        record = get_record(request)
        record.cache_read, record.cache_write = cache_control(
            request.headers.get("Cache-Control", "")
        )
        async with manager.use(req.model, req.keep_alive_s()) as model:
            return await self.respond(request, req, model, record)

    async def respond(
        self, request: web.Request, req: R, model: Model, record: RequestRecord
    ) -> web.StreamResponse:
        raise NotImplementedError

    def log_prompts(self, what: str, prompts: Any) -> None:
        if self.settings.server.log_prompts:
            log.info("%s: %r", what, prompts)

    # -- checks that need the model's facts ------------------------------------------------

    @staticmethod
    def vocabulary(model: Model) -> int:
        return model.process.info.n_vocab if model.process.info else 0

    @staticmethod
    def check_tokens(prompt: str | list[int], n_vocab: int, param: str) -> None:
        if isinstance(prompt, list) and any(t < 0 or t >= n_vocab for t in prompt):
            raise InvalidRequest(f"token ids must be in [0, {n_vocab})", param=param)

    @staticmethod
    def check_dimensions(dimensions: int | None, model: Model) -> None:
        n_embd = model.process.info.n_embd if model.process.info else 0
        if dimensions is not None and dimensions > n_embd:
            raise InvalidRequest(
                f"dimensions must be at most {n_embd}: model '{model.name}' makes embeddings of "
                f"{n_embd} dimensions",
                param="dimensions",
            )

    @staticmethod
    def chat_prompt(req: ChatCompletionRequest, model: Model) -> Prompt:
        """The messages, with the tools and calls in them, written out by the model's chat
        template (which may refuse them); client text holding special-token text marked to be
        read as text."""
        info = model.process.info
        # Before the template runs: it would only spend time on what cannot fit.
        size = sum(len(msg.text()) for msg in req.messages)
        check_characters(model, size, "the messages have", "messages")
        template = model.chat_template()
        aware = knows_tools(template.source)
        messages, tools = template_messages(req.messages, req.tool_use, aware)
        return template.render(messages, tools, info.special_texts if info else ())

    @staticmethod
    def check_logit_bias(req: SamplingRequest, n_vocab: int) -> None:
        for token in req.logit_bias or {}:
            if int(token) >= n_vocab:
                raise InvalidRequest(
                    f"logit_bias token {token} is outside the vocabulary (size {n_vocab})",
                    param="logit_bias",
                )

    # -- generation (chat and completions) -------------------------------------------------

    def engine_request(
        self,
        req: SamplingRequest,
        model: Model,
        prompt: str | list[int] | Prompt,
        logprobs: int | None,
        record: RequestRecord,
        echo: bool = False,
        up_to_room: bool = False,
    ) -> m.GenerateRequest:
        """One prompt's request to the engine, its sampling complete."""
        n_vocab = self.vocabulary(model)
        self.check_logit_bias(req, n_vocab)
        spans = prompt.text_spans if isinstance(prompt, Prompt) else []
        prompt = prompt.text if isinstance(prompt, Prompt) else prompt
        self.check_tokens(prompt, n_vocab, "prompt")
        if isinstance(prompt, str) and not isinstance(req, ChatCompletionRequest):
            # Refused here rather than in the engine: a 30 MB prompt shipped to the model
            # process held up every stream the daemon writes (docs/benchmarks.md).
            check_characters(model, len(prompt), "the prompt has", "prompt")
        return m.GenerateRequest(
            id=uuid.uuid4().hex,
            prompt=prompt,
            prompt_param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            text_spans=spans,
            sampling=req.to_sampling_params(model.settings.sampling),
            n=req.n,
            stop=req.stop_list(),
            logprobs=logprobs,
            ignore_eos=req.ignore_eos,
            speculative=req.speculative,
            return_prompt_text=echo and isinstance(prompt, list),
            max_tokens_up_to_room=up_to_room,
            tenant=tenant(record),
            weight=record.weight,
        )

    async def submit(
        self, model: Model, reqs: list[m.GenerateRequest], n: int, record: RequestRecord
    ) -> Run:
        """Hand the prompts to the engine (or find their answer in the response cache); once
        all are accepted, follow them as one run."""
        options = model.process.options
        capacity = options.load.parallel + options.max_queue
        if len(reqs) > 1 and sum(r.n for r in reqs) > capacity:
            # Each would be admitted alone; together they never fit: not a retryable 503.
            raise InvalidRequest(
                f"{len(reqs)} prompts x n={n} sequences are more than model '{model.name}' "
                f"holds at once ({capacity}, its slots and queue)",
                param="prompt",
            )
        timeout_s = self.settings.server.request_timeout_s
        plan = await self.cache.plan(record, model, reqs)
        result = "bypass"
        if plan is not None and record.cache_read:
            result, found = await self.cache.lookup(plan, reqs)
            if found is not None:
                self.cache.count(record, "hit")
                replays = [_replayed(req, events) for req, events in zip(reqs, found, strict=True)]
                run = Run(model, replays, n, timeout_s, record)
                await run.start()
                return run
        self.cache.count(record, result)
        handles: list[RequestHandle] = []
        try:
            for req in reqs:
                handles.append(model.process.submit(req))
        except Exception:
            for handle in handles:
                model.process.cancel(handle)
            raise
        run = Run(model, handles, n, timeout_s, record)
        if plan is not None and record.cache_write:
            run.keep = functools.partial(self.cache.keep, plan)
        try:
            await run.start()
        except BaseException:
            run.close()
            raise
        return run

    async def stream(
        self,
        request: web.Request,
        run: Run,
        opening: Iterable[dict[str, Any]],
        chunks: Callable[[int, m.Delta], Iterable[dict[str, Any]]],
        usage_chunk: Callable[[], dict[str, Any]] | None,
    ) -> web.StreamResponse:
        """A run as OpenAI's SSE chunks: the `opening` ones, each delta's `chunks`, then the
        usage chunk (if asked for) and `[DONE]`; an error ends the stream in its place."""
        sse = await EventStream.open(request)
        for chunk in opening:
            await sse.send(chunk)
        try:
            async for index, delta in run.deltas():
                for chunk in chunks(index, delta):
                    await sse.send(chunk)
        except APIError as exc:
            return await sse.fail(exc)
        return await sse.done(usage_chunk() if usage_chunk is not None else None)


def check_characters(model: Model, size: int, what: str, param: str) -> None:
    """A 400 for text longer than the model's context could hold at MAX_CHARS_PER_TOKEN
    characters a token: the bound the engine applies before tokenizing, applied early."""
    info = model.process.info
    limit = (info.ctx_per_seq if info else 0) * m.MAX_CHARS_PER_TOKEN
    if info and size > limit:
        raise InvalidRequest(
            f"This model's maximum context length is {info.ctx_per_seq} tokens. However, "
            f"{what} {size} characters, more than {limit} ({m.MAX_CHARS_PER_TOKEN} a token) "
            "could ever fit. Please reduce the length.",
            code="context_length_exceeded",
            param=param,
        )


def _replayed(req: m.GenerateRequest, events: Events) -> RequestHandle:
    """A request answered from the cache: its stored events, waiting to be read as the
    engine's would be (the model process never hears of it)."""
    handle = RequestHandle(req.id, req.n)
    for event in events:
        handle.queue.put_nowait(event)
    return handle


def tenant(record: RequestRecord) -> str:
    """Who the engine shares fairly between: a busy engine admits waiting requests
    round-robin by key (by client address without keys)."""
    return record.key_name or record.client


def request_timeout() -> APIError:
    return APIError(
        "The request took longer than the server's request timeout.",
        code="timeout",
        status=504,
    )


@dataclass
class Choice:
    """One choice's answer, collected for a response that is not streamed."""

    text: str = ""
    logprobs: list[m.TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: m.Delta) -> None:
        self.text += delta.text
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


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
        self.keep: Callable[[list[Events]], Awaitable[None]] | None = None
        """Given every prompt's events once all ended (for the response cache)."""
        self._events: list[Events] = [[] for _ in handles]

    async def start(self) -> None:
        """Wait until every prompt is tokenized and accepted (or raise its 4xx/5xx)."""
        for i, stream in enumerate(self._streams):
            first = await self._within_deadline(anext(stream))
            assert isinstance(first, m.Started)
            if self.keep is not None:
                self._events[i].append(first)
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
                    continue
                if isinstance(event, Exception):
                    raise event
                if self.keep is not None:
                    self._events[i].append(event)
                if isinstance(event, m.Admitted):
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
            if self.keep is not None:
                await self.keep(self._events)
        finally:
            for task in tasks:
                task.cancel()

    async def collect(self, choices: list[Choice]) -> list[Choice]:
        """Every delta added to its choice, for a response that is not streamed."""
        async for index, delta in self.deltas():
            choices[index].add(delta)
        return choices

    async def _within_deadline(self, awaitable: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(awaitable, self.deadline - time.monotonic())
        except TimeoutError:
            raise request_timeout() from None

    def close(self) -> None:
        for handle in self.handles:
            self.model.process.cancel(handle)

    def usage(self) -> dict[str, Any]:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
