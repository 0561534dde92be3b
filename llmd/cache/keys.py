"""What a cached answer is filed under: the model's identity and the engine request.

An answer is determined by the model (its weights, and the load options that change its
arithmetic) and by the engine request: the prompt after the chat template (so the template,
tools and the translation of the Responses or Messages API are in it), the complete sampling
parameters after the model's defaults, `n`, stop strings, logprobs. Fields that do not change
the output (the request's id, who asked and their fair-share weight, the parameter an error
would be blamed on, whether it may speculate) are left out. So is everything of the HTTP
request that never reaches the engine (`stream`, `stream_options`, `user`, `metadata`,
`store`): the same answer is reused by chat completions, Responses and Messages whenever they
ask the engine the same thing.

The model's identity is its file's content (a SHA-256 of every part), so a replaced file, or
the same file on another box sharing the Redis backend, is told apart by what it holds, not by
its name or time stamp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from llmd.engine import messages as m
from llmd.models import Model
from llmd.watch import FileKey, file_key, split_parts

log = logging.getLogger("llmd.cache")

FORMAT = 1
"""Bumped when what an entry holds changes: older entries are then never read."""

# `speculative` too: verification keeps exactly the tokens one step at a time would give.
_UNKEYED = {"id", "tenant", "weight", "prompt_param", "speculative"}


def determined(req: m.GenerateRequest) -> bool:
    """Whether the request's output is fixed by the request: an embedding, greedy decoding, or
    sampling from a given seed. Anything else is never answered from the cache."""
    return req.embed or req.sampling.temperature <= 0 or req.sampling.seed is not None


def request_key(identity: str, reqs: list[m.GenerateRequest]) -> str:
    """The digest the answer to these engine requests (of one API request) is filed under."""
    h = hashlib.sha256(f"llmd-cache/{FORMAT}\n{identity}\n".encode())
    for req in reqs:
        # Field by field rather than dataclasses.asdict, whose deep copy of every value was
        # most of a miss's cost in the daemon (bench/cache.py, miss_path).
        fields = {k: v for k, v in vars(req).items() if k not in _UNKEYED}
        sampling = dict(vars(req.sampling))
        if req.sampling.grammar is not None:
            sampling["grammar"] = dataclasses.asdict(req.sampling.grammar)
        fields["sampling"] = sampling
        text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def _llama_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown"


LLAMA_VERSION = _llama_version()
"""A new llama.cpp may compute differently: its answers are new entries."""


class Identities:
    """Each loaded model's identity, its file hashed once (in a thread) per file version."""

    def __init__(self) -> None:
        self._digests: dict[tuple[tuple[str, ...], FileKey], asyncio.Future[str | None]] = {}

    async def of(self, model: Model) -> str | None:
        """The model's identity, or None while it cannot be known (its file changed after it
        was loaded: answers are not cached until the new version has taken over)."""
        path = model.process.options.load.path
        paths = split_parts(path)
        loaded = model.file_key
        if loaded is None:
            return None
        slot = (tuple(str(p) for p in paths), loaded)
        future = self._digests.get(slot)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(_digest, paths, loaded))
            self._digests = {k: v for k, v in self._digests.items() if k[0] != slot[0]}
            self._digests[slot] = future
        try:
            digest = await asyncio.shield(future)
        except Exception as exc:  # noqa: BLE001 - an unknown identity only means no caching
            log.warning("cache: cannot identify model %s: %s", model.name, exc)
            return None
        if digest is None:
            return None
        load, info = model.process.options.load, model.process.info
        # "fastest" is decided at load, per CPU: the key holds what the process runs with.
        flash_attn = info.flash_attn if info and info.flash_attn else load.flash_attn
        # Batch-invariant kernels give other logits than the default ones.
        kernels = "/invariant" if load.batch_invariant else ""
        return (
            f"{digest}/ctx={load.ctx_per_seq}/kv={load.kv_type}/fa={flash_attn}{kernels}"
            f"/llama={LLAMA_VERSION}"
        )


def _digest(paths: list[Path], loaded: FileKey) -> str | None:
    """SHA-256 over the files, if they are still the version the model loaded (compared
    before and after reading, so a file replaced meanwhile is never misfiled)."""
    if file_key(paths) != loaded:
        return None
    h = hashlib.sha256()
    try:
        for path in paths:
            with path.open("rb") as f:
                hashlib.file_digest(f, lambda: h)
    except OSError as exc:
        log.warning("cache: cannot read %s to identify it: %s", paths[0], exc)
        return None
    return h.hexdigest() if file_key(paths) == loaded else None


def encode(value: Any) -> bytes:
    # surrogatepass: a lone surrogate (JSON's "\ud800", which Python keeps in a str) is in
    # a request's text as the client sent it; it must be keyed and kept, not a 500.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogatepass"))
