"""What the daemon and a model process say to each other (pickled over a socketpair)."""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_HEADER = struct.Struct("!I")
HEADER_SIZE = _HEADER.size

MAX_CHARS_PER_TOKEN = 32
"""A text prompt longer than the context times this many characters cannot fit, and is refused
before it is tokenized (tokenizing a 6 MiB prompt took over a minute) or, for a chat, before
its template runs. Real text averages about 4 characters a token; even runs of one repeated
character stay under 32."""


@dataclass
class ToolSpec:
    """A function the output may call: its name and its parameters' JSON schema (JSON text)."""

    name: str
    parameters: str


@dataclass
class Grammar:
    """Output held to a grammar: `response_format`'s JSON modes, llmd's raw GBNF, or tool calls
    written in a call format (llmd/tools.py chooses the format; the engine only holds the
    output to it)."""

    kind: Literal["json_object", "json_schema", "gbnf", "tool_calls"]
    source: str = ""
    """The JSON schema as JSON text (json_schema), or the GBNF (gbnf)."""
    param: str = "response_format"
    """The request parameter a grammar that cannot be used is blamed on."""
    gbnf: str = ""
    """The grammar applied, written in the model process (the JSON schema converter ships
    with llama.cpp's Python binding, which the daemon process does not load)."""
    tools: list[ToolSpec] = field(default_factory=list)
    """kind "tool_calls": the functions a call may name."""
    opening: str = ""
    closing: str = ""
    """kind "tool_calls": the markup around each call (`{"name": ..., "arguments": {...}}`)."""
    parallel: bool = True
    """kind "tool_calls": several calls in a row, or exactly one."""
    lazy: bool = False
    """kind "tool_calls": free text until the model writes `opening`, held from there on (a
    lazy grammar, as llama.cpp's server holds "auto" tool calls)."""
    answer: Grammar | None = None
    """kind "tool_calls": instead of calls, an answer held to this grammar (response_format)."""


@dataclass
class SamplingParams:
    """How one request's tokens are chosen, complete: no field has a default here, so the
    engine never decides one. `llmd.sampling.resolve` fills every field."""

    temperature: float
    top_p: float
    top_k: int
    """0: no top-k cut."""
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    """Tokens of history the three penalties look at."""
    frequency_penalty: float
    presence_penalty: float
    max_tokens: int | None
    """None: as many as the context leaves after the prompt (known once it is tokenized)."""
    seed: int | None
    """None: a random seed per request."""
    logit_bias: dict[int, float]
    grammar: Grammar | None


@dataclass
class GenerateRequest:
    id: str
    prompt: str | list[int]
    sampling: SamplingParams
    n: int = 1
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob plus the k most likely."""
    ignore_eos: bool = False
    return_prompt_text: bool = False
    tenant: str = ""
    """Who asked (API key name): waiting requests are admitted round-robin across tenants."""
    weight: int = 1
    """The tenant's share: weight 2 gets two admissions per turn when others wait too."""
    embed: bool = False
    """Read the prompt for its embedding (one `Embedding` event) instead of generating."""
    count_only: bool = False
    """Only tokenize the prompt: answered with one `Started` (its token count) and never
    admitted (Anthropic's count_tokens)."""
    max_tokens_up_to_room: bool = False
    """`sampling.max_tokens` is a ceiling: fewer when the context has less room after the
    prompt (Anthropic's `max_tokens`, which agent clients set far above a small context)."""
    prompt_param: str = "messages"
    """The request parameter a prompt too long for the context is blamed on."""
    speculative: bool = True
    """Draft and verify several tokens a step where it pays (llmd's `speculative` extension;
    false opts one request out)."""
    text_spans: list[tuple[int, int]] = field(default_factory=list)
    """Character ranges of a text prompt that the client wrote (a chat's messages): read as
    text, so that special-token text in them never becomes a control token. The rest (the
    chat template's markup) is read with its special tokens."""


@dataclass(frozen=True)
class SpeculativeOptions:
    """Speculative decoding (`[engine.speculative]`): drafts checked inside the batch step."""

    enabled: bool = True
    max_draft: int = 16
    """Most draft tokens one sequence adds to a step."""
    adaptive: bool = True
    """Draft where the cost model says it pays; False: every draft found, up to max_draft."""
    ngram_min: int = 2
    ngram_max: int = 12
    """Shortest and longest match of the trailing tokens looked for (the longest wins)."""


@dataclass(frozen=True)
class LoadOptions:
    """How a model process loads its model and sizes its llama.cpp context (llmd/models/options.py
    makes them from the settings)."""

    path: Path
    ctx_per_seq: int
    parallel: int
    batch_size: int
    ubatch_size: int
    threads: int
    threads_batch: int
    flash_attn: str
    kv_type: str
    speculative: SpeculativeOptions = field(default_factory=SpeculativeOptions)
    draft_path: Path | None = None
    """A smaller model of the same vocabulary that drafts tokens (`[models.NAME] draft`),
    loaded in the same process; None: drafts come from n-gram lookup alone."""
    batch_invariant: bool = False
    """`engine.batch_invariant`: plain kernels, flash attention off, even steps (scheduler)."""


@dataclass
class Load:
    """The first message to a model process: which model to load, and how."""

    name: str
    options: LoadOptions


@dataclass
class Cancel:
    id: str


@dataclass
class Shutdown:
    pass


@dataclass
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


@dataclass
class Started:
    """The prompt was tokenized and fits; its tokens are counted and waiting to run. For a
    `count_only` request, the last event: the prompt was counted, nothing runs."""

    id: str
    prompt_tokens: int
    max_tokens: int
    prompt_text: str | None = None


@dataclass
class Admitted:
    """The request got its slots; `cached_tokens` of its prompt were found in the KV cache."""

    id: str
    cached_tokens: int


@dataclass
class Delta:
    id: str
    index: int
    text: str
    tokens: int
    """Tokens generated for this choice since the previous delta."""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None
    """With finish_reason "stop": the stop string that ended the text (None: end of turn)."""


@dataclass
class Embedding:
    """An embed request's answer: the pooled, unit-length vector as float32 bytes."""

    id: str
    vector: bytes


@dataclass
class Failed:
    id: str
    status: int
    message: str
    code: str | None = None
    param: str | None = None


@dataclass
class Ready:
    """Sent once after the model loaded: what the daemon needs to know about it."""

    metadata: dict[str, str]
    n_ctx_train: int
    ctx_per_seq: int
    parallel: int
    n_vocab: int
    bos_token: str
    eos_token: str
    model_bytes: int
    n_embd: int = 0
    """Dimensions of the model's embeddings."""
    flash_attn: str = ""
    """Flash attention as the process runs: "on", "off" or "auto" (llama.cpp's choice);
    `engine.flash_attn = "fastest"` is measured at load (llmd/engine/attention.py)."""
    exact_steps: str = ""
    """Steps shaped so that a token's logits do not depend on its step
    (llmd/engine/invariance.py): "always" (`engine.batch_invariant`), "alone" (while one
    request decodes), "" never."""
    special_texts: list[str] = field(default_factory=list)
    """The text of the model's control tokens (`<|im_end|>`, `<end_of_turn>` ...): client text
    holding any of them is marked as text (`GenerateRequest.text_spans`)."""


@dataclass
class Stats:
    running: int
    waiting: int
    kv_cells_used: int
    kv_cells_total: int
    steps: int
    tokens_decoded: int
    drafted: int = 0
    """Draft tokens put into steps to be verified (speculative decoding), since the start."""
    accepted: int = 0
    """Of those, the ones the model's own choice confirmed."""
    fillers: int = 0
    """Filler tokens put into free slots between running ones (`Admission.gap_fillers`)."""


@dataclass
class Batch:
    """One message per engine step: the events of that step and the engine's counters."""

    events: list[Any]
    stats: Stats


def send(sock: socket.socket, message: Any) -> None:
    sock.sendall(pack(message))


def recv(sock: socket.socket) -> Any:
    size = unpack_header(_recv_exact(sock, _HEADER.size))
    return unpack(_recv_exact(sock, size))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError("peer closed the connection")
        chunks += chunk
    return bytes(chunks)


def pack(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def unpack_header(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    return int(size)


def unpack(data: bytes) -> Any:
    return pickle.loads(data)
