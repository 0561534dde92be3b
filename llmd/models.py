"""The configured models: their processes, names and aliases, chat templates and defaults."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import psutil

from llmd.engine.client import EngineOptions, ModelProcess, ModelState
from llmd.engine.llama import LoadOptions
from llmd.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from llmd.settings import ModelSettings, Settings
from llmd.templates import ChatTemplate, choose_template

log = logging.getLogger("llmd.models")


@dataclass
class Model:
    name: str
    settings: ModelSettings
    process: ModelProcess
    _template: ChatTemplate | None = None
    _template_for: object = None

    def chat_template(self) -> ChatTemplate:
        info = self.process.info
        if info is None:
            raise ServiceUnavailable(
                f"model '{self.name}' is {self.process.state.value}", code="model_not_ready"
            )
        if self._template_for is not info:
            self._template = choose_template(
                self.settings.chat_template, info.metadata, info.bos_token, info.eos_token
            )
            self._template_for = info
        if self._template is None:
            arch = info.metadata.get("general.architecture", "unknown")
            raise InvalidRequest(
                f"Model '{self.name}' has no chat template (architecture '{arch}') and none is "
                "configured: use /v1/completions, or set chat_template for it in the config.",
                code="chat_template_missing",
                param="model",
            )
        return self._template


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def auto_threads(cores: int) -> tuple[int, int]:
    """(decode, prompt) threads when the config says 0.

    Decoding one token is bound by memory bandwidth, not compute: one core fewer costs little,
    and that core keeps the HTTP server and the clients from preempting llama.cpp's threads
    mid-step (on 2 cores: 1 decode thread gave 86 tok/s through the daemon, 2 gave 47; see
    docs/benchmarks.md). Reading prompts is compute-bound and gets every core.
    """
    return max(1, cores - 1), cores


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, Model] = {}
        self.names: dict[str, str] = {}
        engine = settings.engine
        for name, ms in settings.models.items():
            auto_decode, auto_batch = auto_threads(_physical_cores())
            threads = ms.threads or engine.threads or auto_decode
            load = LoadOptions(
                path=settings.model_path(name),
                ctx_per_seq=ms.ctx_per_seq or engine.ctx_per_seq,
                parallel=ms.parallel or engine.parallel,
                batch_size=engine.batch_size,
                ubatch_size=engine.ubatch_size,
                threads=threads,
                threads_batch=engine.threads_batch or auto_batch,
                flash_attn=engine.flash_attn,
                kv_type=engine.kv_type,
            )
            options = EngineOptions(
                load=load,
                omp_wait_policy=engine.omp_wait_policy,
                log_level=settings.server.log_level,
                max_queue=settings.server.max_queue,
                load_timeout_s=engine.load_timeout_s,
                hang_timeout_s=engine.hang_timeout_s,
                restart_backoff_max_s=engine.restart_backoff_max_s,
            )
            self.models[name] = Model(name, ms, ModelProcess(name, options))
            for alias in [name, *ms.aliases]:
                self.names[alias] = name
        self.default = settings.default_model_name()

    async def start(self) -> None:
        await asyncio.gather(*(m.process.start() for m in self.models.values()))
        for model in self.models.values():
            if model.process.state != ModelState.READY:
                log.error("model %s failed to load: %s", model.name, model.process.error)

    async def stop(self) -> None:
        await asyncio.gather(*(m.process.stop() for m in self.models.values()))

    def resolve(self, name: str | None) -> Model:
        if name is None or name == "":
            if self.default is None:
                raise InvalidRequest(
                    "No model given and no default model configured.", param="model"
                )
            name = self.default
        real = self.names.get(name)
        if real is None:
            raise ModelNotFound(name)
        return self.models[real]

    # -- reload (issue 5) ----------------------------------------------------------------------
    # A minimal SIGHUP reload: diff the model tables. Issue 4's manager replaces this with its
    # own `apply_settings` (same signature); the daemon only relies on that signature.

    async def apply_settings(self, new: Settings) -> None:
        """Serve `new`'s models: start added ones, restart re-tuned ones, retire removed ones.

        A re-tuned model's new process loads while the old one still serves; requests already
        running on a replaced or removed process finish there before it is stopped.
        """
        fresh = ModelManager(new)  # builds the Model objects; starts no process
        models: dict[str, Model] = {}
        to_start: list[Model] = []
        for name, model in fresh.models.items():
            old = self.models.get(name)
            same_process = old is not None and (
                old.process.options.load == model.process.options.load
                and old.process.options.omp_wait_policy == model.process.options.omp_wait_policy
            )
            if old is not None and same_process:
                # Sampling defaults, aliases, template, queue and timeouts change in place.
                old.settings = model.settings
                old.process.options = model.process.options
                old._template_for = None
                models[name] = old
            else:
                models[name] = model
                to_start.append(model)
        for model in to_start:
            log.info(
                "model %s: %s", model.name, "restarting" if model.name in self.models else "adding"
            )
        await asyncio.gather(*(m.process.start() for m in to_start))
        retired = [m for name, m in self.models.items() if models.get(name) is not m]
        self.models, self.names, self.default = models, fresh.names, fresh.default
        self.settings = new
        for model in retired:
            task = asyncio.create_task(self._retire(model), name=f"retire:{model.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    # Strong references to the retiring tasks (asyncio keeps only weak ones); a class attribute
    # so that __init__, which issue 4 rewrites, stays untouched here.
    _retiring: set[asyncio.Task[None]] = set()

    async def _retire(self, model: Model) -> None:
        """Stop a process no longer served, once its in-flight requests are done."""
        try:
            while model.process.num_inflight:
                await asyncio.sleep(0.1)
        finally:  # also when the daemon stops meanwhile: never leave a child process behind
            await model.process.stop()
            log.info("model %s: old process stopped", model.name)
