"""A model process's main: load the model, then run the step loop until told to stop.

Started by the daemon as `python -m llmd.engine.worker --fd N`, with one end of a socketpair.
One thread owns the llama.cpp context and runs the steps; a second thread reads the socket and
tokenizes each request as it arrives (llama.cpp releases the GIL and only reads the
vocabulary), so a request arriving mid-step waits for the next step and never for a lock, and
a long prompt being tokenized never holds up the others' steps.
"""

from __future__ import annotations

import argparse
import logging
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from llmd.engine import messages as m

HEARTBEAT_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmd-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    # Imported here: the daemon imports this module's neighbours without loading llama.cpp.
    # Imported before the model is known: the daemon keeps one process started ahead, so
    # that loading a model on demand does not wait for Python and llama.cpp to start.
    from llmd.engine.invariance import exact_steps
    from llmd.engine.llama import LlamaBackend, LoadError
    from llmd.engine.scheduler import Scheduler
    from llmd.engine.speculate import probe_costs

    sock = socket.socket(fileno=args.fd)
    try:
        load = m.recv(sock)
    except (EOFError, OSError):
        return 0  # a spare process the daemon no longer needs
    if not isinstance(load, m.Load):
        return 2
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s llmd.worker[{load.name}] %(message)s")
    )
    options = load.options

    try:
        backend = LlamaBackend(options)
    except LoadError as exc:
        m.send(sock, m.Failed("load", 503, str(exc), code="model_load_failed"))
        return 3
    speculative, costs = options.speculative, None
    if speculative.enabled and not backend.encoder_only:
        costs = probe_costs(backend, max(backend.bos, 0))
        if costs is None:
            logging.getLogger("llmd.worker").info(
                "speculative decoding off: this model cannot drop a sequence's last cells"
            )
            speculative = m.SpeculativeOptions(enabled=False)
    elif backend.encoder_only:
        speculative = m.SpeculativeOptions(enabled=False)
    meta = backend.metadata()
    m.send(
        sock,
        m.Ready(
            metadata=meta,
            n_ctx_train=backend.n_ctx_train,
            ctx_per_seq=backend.max_input,
            parallel=options.parallel,
            n_vocab=backend.n_vocab,
            bos_token=backend.special_text(backend.bos),
            eos_token=backend.special_text(backend.eos),
            model_bytes=backend.model_bytes(),
            n_embd=backend.n_embd,
            flash_attn=backend.flash_attn,
            exact_steps=exact_steps(backend.shapes),
            special_texts=backend.special_texts(),
        ),
    )
    scheduler = Scheduler(
        backend,
        backend.max_input,
        backend.adds_bos(),
        backend.bos,
        backend.special_text(backend.bos),
        speculative,
        costs,
        shapes=backend.shapes,
    )
    inbox: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_read, args=(sock, inbox, scheduler), daemon=True).start()
    try:
        _loop(sock, scheduler, inbox)
    finally:
        backend.close()
    return 0


@dataclass
class _Tokenized:
    """A request with its prompt tokenized (or refused) off the step loop."""

    req: m.GenerateRequest
    tokens: list[int] | m.Failed


def _read(sock: socket.socket, inbox: queue.Queue[Any], scheduler: Any) -> None:
    try:
        while True:
            msg = m.recv(sock)
            if isinstance(msg, m.GenerateRequest):
                msg = _Tokenized(msg, _tokenize(scheduler, msg))
            inbox.put(msg)  # in order: a Cancel never overtakes its request
    except (EOFError, OSError):
        inbox.put(m.Shutdown())  # the daemon went away: nobody is left to serve


def _tokenize(scheduler: Any, req: m.GenerateRequest) -> list[int] | m.Failed:
    try:
        tokens: list[int] | m.Failed = scheduler.tokenize(req)
    except Exception as exc:  # noqa: BLE001 - reported to its one client
        logging.getLogger("llmd.worker").exception("request %s refused", req.id)
        return m.Failed(req.id, 400, f"The request could not be processed: {exc}")
    return tokens


def _loop(sock: socket.socket, scheduler: Any, inbox: queue.Queue[Any]) -> None:
    last_sent = 0.0
    while True:
        events: list[Any] = []
        timeout = None if scheduler.has_work() else HEARTBEAT_S
        try:
            msg = inbox.get(timeout=timeout) if timeout else inbox.get_nowait()
            while True:
                if isinstance(msg, m.Shutdown):
                    return
                if isinstance(msg, _Tokenized):
                    events.extend(_submit(scheduler, msg.req, msg.tokens))
                elif isinstance(msg, m.Cancel):
                    scheduler.cancel(msg.id)
                msg = inbox.get_nowait()
        except queue.Empty:
            pass
        if scheduler.has_work():
            events.extend(scheduler.step())
        now = time.monotonic()
        if events or now - last_sent >= HEARTBEAT_S:
            m.send(sock, m.Batch(events, scheduler.stats()))
            last_sent = now


def _submit(scheduler: Any, req: m.GenerateRequest, tokens: list[int] | m.Failed) -> list[Any]:
    """A request that cannot even be queued fails alone; the process serves on."""
    try:
        return list(scheduler.submit(req, tokens))
    except Exception as exc:  # noqa: BLE001 - reported to its one client
        logging.getLogger("llmd.worker").exception("request %s refused", req.id)
        return [m.Failed(req.id, 400, f"The request could not be processed: {exc}")]


if __name__ == "__main__":
    raise SystemExit(main())
