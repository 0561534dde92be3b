"""A small reader of GGUF headers and metadata, and the memory estimate made from them.

It reads only the header (key/values and tensor table), never the weights, so the daemon
can list, check and place a model without loading it: a file still being copied is seen to
be incomplete (the tensor table says how long the file must be), a legacy GGML file or a
corrupt one gets a reason, and the estimate of what the model will cost is computed from the
architecture (layers, KV heads, head sizes) and the load settings.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
# Legacy GGML container magics as they appear on disk (little-endian uint32 'ggml', ...).
_LEGACY_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt", b"algg": "ggla"}
LEGACY_HINT = (
    "legacy GGML file (format '{kind}', from before August 2023): llama.cpp reads only GGUF. "
    "Convert it with llama.cpp's convert_llama_ggml_to_gguf.py "
    "(python convert_llama_ggml_to_gguf.py --input OLD.bin --output NEW.gguf), "
    "or get a GGUF build of the model"
)
SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")

# ggml tensor types: (elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}

# llama.cpp's llama_ftype values (general.file_type) and the names `llmd models quantize`
# accepts for them.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
UNQUANTIZED = {"F32", "F16", "BF16"}
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}

# Value types of GGUF key/values: struct format of the scalars.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY = 4096  # arrays longer than this (vocabularies) are skipped, only counted


class GGUFError(Exception):
    """Not a usable GGUF file; the message says why (and how to fix a legacy GGML file)."""


class Incomplete(GGUFError):
    """The file ends before its header or its tensor data do: still being copied, or cut."""


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    tensor_bytes: int
    parameters: int
    expected_size: int
    file_size: int
    tensor_types: dict[int, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def quantization(self) -> str:
        ftype = self.metadata.get("general.file_type")
        if isinstance(ftype, int):
            return FILE_TYPES.get(ftype, f"type {ftype}")
        # Old files have no file_type: name the most common tensor type's bytes instead.
        return "unknown"

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def n_layer(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayInfo):
            return tokens.count
        if isinstance(tokens, list):
            return len(tokens)
        return int(self.arch_value("vocab_size", 0) or 0)

    @property
    def encoder_only(self) -> bool:
        """An embedding model with attention both ways (BERT family): llama.cpp gives it no
        KV cache."""
        return self.arch_value("attention.causal", True) is False

    def kv_bytes_per_token(self, kv_type: str = "f16") -> int:
        """KV cache bytes one token of context costs, over all layers."""
        if self.encoder_only:
            return 0
        n_layer = self.n_layer
        n_embd = int(self.arch_value("embedding_length", 0) or 0)
        heads = self.arch_value("attention.head_count", 1) or 1
        kv_heads = self.arch_value("attention.head_count_kv", heads)
        n_head = max(heads) if isinstance(heads, list) else int(heads)
        default_head = n_embd // n_head if n_head else 0
        k_len = int(self.arch_value("attention.key_length", default_head) or default_head)
        v_len = int(self.arch_value("attention.value_length", default_head) or default_head)
        per_layer = kv_heads if isinstance(kv_heads, list) else [int(kv_heads)] * n_layer
        elements = sum(int(h) * (k_len + v_len) for h in per_layer[:n_layer])
        return int(elements * KV_TYPE_BYTES[kv_type])


@dataclass
class ArrayInfo:
    """A long array (a vocabulary) that was skipped: its element type and length only."""

    type: int
    count: int


class _Reader:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise Incomplete("the file ends inside its GGUF header (still being copied, or cut)")

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        if n > 1 << 30:
            raise GGUFError(f"corrupt GGUF header: a string of {n} bytes at offset {self.pos}")
        self.need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.unpack("Q")
        self.need(n)
        self.pos += n

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("I")
            count = self.unpack("Q")
            if count > 1 << 32:
                raise GGUFError(f"corrupt GGUF header: an array of {count} items")
            if count > _KEEP_ARRAY:
                for _ in range(count):
                    self.skip(etype)
                return ArrayInfo(etype, count)
            return [self.value(etype) for _ in range(count)]
        raise GGUFError(f"corrupt GGUF header: unknown value type {vtype} at offset {self.pos}")

    def skip(self, vtype: int) -> None:
        if vtype in _SCALARS:
            n = struct.calcsize("<" + _SCALARS[vtype])
            self.need(n)
            self.pos += n
        elif vtype == _STRING:
            self.skip_string()
        else:
            self.value(vtype)


def read_gguf(path: Path) -> GGUFInfo:
    """Read one GGUF file's header; raises GGUFError (Incomplete for a short file)."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size < 8:
            raise Incomplete(f"only {size} bytes: not a complete GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, size)


def _parse(path: Path, buf: Any, size: int) -> GGUFInfo:
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        if magic in _LEGACY_MAGICS:
            raise GGUFError(LEGACY_HINT.format(kind=_LEGACY_MAGICS[magic]))
        raise GGUFError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    r = _Reader(buf, size)
    r.pos = 4
    version = r.unpack("I")
    if version not in (2, 3):
        # Version 1 (Aug 2023) is no longer read by llama.cpp either.
        raise GGUFError(f"unsupported GGUF version {version} (llama.cpp reads 2 and 3)")
    tensor_count = r.unpack("Q")
    kv_count = r.unpack("Q")
    if tensor_count > 1 << 24 or kv_count > 1 << 24:
        raise GGUFError("corrupt GGUF header: impossible tensor or key counts")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = r.string()
        metadata[key] = r.value(r.unpack("I"))
    end = 0
    params = 0
    tensor_types: dict[int, int] = {}
    for _ in range(tensor_count):
        r.skip_string()
        n_dims = r.unpack("I")
        if n_dims > 8:
            raise GGUFError(f"corrupt GGUF header: a tensor with {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= r.unpack("Q")
        ttype = r.unpack("I")
        offset = r.unpack("Q")
        if ttype not in GGML_TYPES:
            raise GGUFError(f"unknown tensor type {ttype} (a newer llama.cpp may read it)")
        block, block_bytes = GGML_TYPES[ttype]
        nbytes = elements // block * block_bytes
        params += elements
        tensor_types[ttype] = tensor_types.get(ttype, 0) + nbytes
        end = max(end, offset + nbytes)
    alignment = int(metadata.get("general.alignment", 32) or 32)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    return GGUFInfo(
        path=path,
        version=version,
        metadata=metadata,
        tensor_count=tensor_count,
        tensor_bytes=sum(tensor_types.values()),
        parameters=params,
        expected_size=data_start + end,
        file_size=size,
        tensor_types=tensor_types,
    )


def check_complete(info: GGUFInfo) -> None:
    if info.file_size < info.expected_size:
        raise Incomplete(
            f"the file is {info.file_size} bytes but its tensors need {info.expected_size}: "
            "still being copied, or truncated"
        )


@dataclass
class ModelFile:
    """A model on disk: one GGUF file or all parts of a split one, read and checked."""

    path: Path
    """The file llama.cpp is given (the first part of a split model)."""
    parts: list[Path]
    info: GGUFInfo
    file_size: int
    tensor_bytes: int
    parameters: int


def read_model(path: Path) -> ModelFile:
    """Read and check a model's file(s): complete, GGUF, all split parts present."""
    parts = [path]
    if match := SPLIT_RE.match(path.name):
        count = int(match["count"])
        parts = [
            path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf")
            for i in range(1, count + 1)
        ]
        missing = [p.name for p in parts if not p.exists()]
        if missing:
            raise Incomplete(f"split model: missing part(s) {', '.join(missing)}")
    infos = []
    for part in parts:
        try:
            info = read_gguf(part)
        except FileNotFoundError:
            raise GGUFError(f"file not found: {part}") from None
        except OSError as exc:
            raise GGUFError(f"cannot read {part}: {exc.strerror or exc}") from None
        check_complete(info)
        infos.append(info)
    return ModelFile(
        path=parts[0],
        parts=parts,
        info=infos[0],
        file_size=sum(i.file_size for i in infos),
        tensor_bytes=sum(i.tensor_bytes for i in infos),
        parameters=sum(i.parameters for i in infos),
    )


def read_model_cached(path: Path) -> ModelFile:
    """`read_model`, kept while the file is unchanged: a draft model's file is asked for on
    every status report, and reading a header walks the whole vocabulary (~0.1 s for
    SmolLM2's 49k tokens, ~0.4 s for Gemma 3's 262k)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise GGUFError(f"file not found: {path}") from None
    return _read_unchanged(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _read_unchanged(path: Path, _mtime_ns: int, _size: int) -> ModelFile:
    return read_model(path)


# What a loaded model costs beyond weights and KV cache, fitted to the measured RSS of model
# processes of SmolLM2 (49k vocabulary) and Gemma-3 (262k) at several settings (within 1%,
# docs/models.md): the process itself (Python, numpy, llama.cpp), llama.cpp's vocabulary
# tables (~200 bytes per token), the graph scratch of one micro-batch and the logits buffer.
# Not counted: the logits rows of an embedding chunk (up to ~32 MB, `embed_chunk` in
# llmd/engine/scheduler.py), there only once a model was asked for embeddings. The manager
# counts a loaded model by its measured RSS, which has them from then on.
PROCESS_BASE_BYTES = 57 * 1000 * 1000
VOCAB_ENTRY_BYTES = 200


@dataclass
class Estimate:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def estimate(
    model: ModelFile,
    ctx_per_seq: int,
    parallel: int,
    ubatch: int,
    kv_type: str = "f16",
    draft: ModelFile | None = None,
    attention_scores: bool = False,
) -> Estimate:
    """Memory a model will take once loaded with these settings (before any measurement).

    A `draft` model (speculative decoding) runs in the same process with a context of the
    same shape: its weights, its own KV cache and its other costs count in each part. Its
    other costs are a whole model's, PROCESS_BASE_BYTES included: measured, a SmolLM2 draft
    added as much as a SmolLM2 process takes (at 512 x 2 and at 4096 x 4, within 1%).

    `attention_scores`: flash attention may be off, and then a micro-batch's attention
    scores are a matrix in memory (float32, a micro-batch's rows by a sequence's cells by the
    heads, and its softmax beside it)."""
    main = _estimate_one(model, ctx_per_seq, parallel, ubatch, kv_type, attention_scores)
    if draft is None:
        return main
    extra = _estimate_one(draft, ctx_per_seq, parallel, ubatch, kv_type, attention_scores)
    return Estimate(
        main.weights + extra.weights,
        main.kv_cache + extra.kv_cache,
        main.compute + extra.compute,
    )


def _estimate_one(
    model: ModelFile,
    ctx_per_seq: int,
    parallel: int,
    ubatch: int,
    kv_type: str,
    attention_scores: bool = False,
) -> Estimate:
    info = model.info
    kv = info.kv_bytes_per_token(kv_type) * ctx_per_seq * parallel
    n_embd = int(info.arch_value("embedding_length", 0) or 0)
    ff = info.arch_value("feed_forward_length", 4 * n_embd) or 4 * n_embd
    n_ff = max(ff) if isinstance(ff, list) else int(ff)
    # float32 activations of one micro-batch, one logits row per sequence, the vocabulary.
    # An encoder-only model outputs every token of a step: up to a micro-batch of rows.
    rows = ubatch if info.encoder_only else parallel
    compute = (
        4 * ubatch * (4 * n_embd + 2 * n_ff)
        + 4 * info.n_vocab * rows
        + VOCAB_ENTRY_BYTES * info.n_vocab
    )
    if attention_scores and not info.encoder_only:
        heads = info.arch_value("attention.head_count", 0) or 0
        n_head = max(heads) if isinstance(heads, list) else int(heads)
        compute += 2 * 4 * ubatch * ctx_per_seq * n_head
    return Estimate(model.tensor_bytes, kv, PROCESS_BASE_BYTES + compute)
