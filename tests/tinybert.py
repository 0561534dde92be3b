"""A tiny BERT embedding model as a GGUF file, written from scratch for the tests.

Encoder-only embedding models (BERT, nomic-bert, bge, all-MiniLM ...) are what most people
use for search, but no PyPI package at hand ships one as GGUF. This one has random weights,
a 128-word WordPiece vocabulary, 2 layers and 32 dimensions: its vectors mean nothing, but
llama.cpp loads and runs it exactly as it runs a real one (architecture `bert`, no KV cache,
non-causal attention, mean pooling declared in the file).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

WORDS = (
    "the cat sat on mat a dog ran in park printer is out of toner office meeting price list "
    "contract service manual search page document question answer model local building staff "
    "floor ticket report invoice order customer branch"
).split()
N_EMBD, N_FF, N_LAYER, N_HEAD, N_CTX = 32, 64, 2, 2, 64

_STRING, _ARRAY, _UINT32, _INT32, _FLOAT32, _BOOL = 8, 9, 4, 5, 6, 7


def vocabulary() -> list[str]:
    """[PAD] at 0 and [UNK] [CLS] [SEP] [MASK] at 100-103, where BERT's tokenizers put them.
    As llama.cpp's converter writes WordPiece vocabularies: a word that starts a word as
    "\u2581word", a piece that continues one ("##er") as plain "er"."""
    words = list(dict.fromkeys([*(f"\u2581{w}" for w in WORDS), *(w[-2:] for w in WORDS)]))
    head = ["[PAD]", *words[:99]]
    head += [f"[unused{i}]" for i in range(len(head), 100)]
    return [*head, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[99:]]


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, kind: int, value: object) -> bytes:
    out = _string(key) + struct.pack("<I", kind)
    if kind == _STRING:
        return out + _string(str(value))
    if kind == _UINT32:
        return out + struct.pack("<I", value)
    if kind == _FLOAT32:
        return out + struct.pack("<f", value)
    if kind == _BOOL:
        return out + struct.pack("<?", value)
    assert kind == _ARRAY and isinstance(value, tuple)
    elem, items = value
    out += struct.pack("<IQ", elem, len(items))
    for item in items:
        out += _string(item) if elem == _STRING else struct.pack("<i", item)
    return out


def write(path: Path, seed: int = 7, pooling: int = 1) -> Path:
    """Write the model to `path`; the same seed gives the same weights. `pooling` is the
    GGUF's pooling type: 1 mean, 2 cls, 3 last."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    # llama.cpp: 1 normal, 2 unknown, 3 control (the bracketed specials).
    types = tuple(
        3 if t.startswith("[") and t != "[UNK]" else 2 if t == "[UNK]" else 1 for t in vocab
    )
    meta = [
        _kv("general.architecture", _STRING, "bert"),
        _kv("general.name", _STRING, "tiny-bert (test)"),
        _kv("bert.context_length", _UINT32, N_CTX),
        _kv("bert.embedding_length", _UINT32, N_EMBD),
        _kv("bert.feed_forward_length", _UINT32, N_FF),
        _kv("bert.block_count", _UINT32, N_LAYER),
        _kv("bert.attention.head_count", _UINT32, N_HEAD),
        _kv("bert.attention.layer_norm_epsilon", _FLOAT32, 1e-12),
        _kv("bert.attention.causal", _BOOL, False),
        _kv("bert.pooling_type", _UINT32, pooling),
        _kv("tokenizer.ggml.model", _STRING, "bert"),
        _kv("tokenizer.ggml.tokens", _ARRAY, (_STRING, tuple(vocab))),
        _kv("tokenizer.ggml.token_type", _ARRAY, (_INT32, types)),
        _kv("tokenizer.ggml.token_type_count", _UINT32, 2),
        _kv("tokenizer.ggml.bos_token_id", _UINT32, 101),
        _kv("tokenizer.ggml.eos_token_id", _UINT32, 102),
        _kv("tokenizer.ggml.unknown_token_id", _UINT32, 100),
        _kv("tokenizer.ggml.seperator_token_id", _UINT32, 102),
        _kv("tokenizer.ggml.padding_token_id", _UINT32, 0),
    ]
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (N_EMBD, len(vocab)),
        "token_types.weight": (N_EMBD, 2),
        "position_embd.weight": (N_EMBD, N_CTX),
        "token_embd_norm.weight": (N_EMBD,),
        "token_embd_norm.bias": (N_EMBD,),
    }
    for i in range(N_LAYER):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{i}.{name}.weight"] = (N_EMBD, N_EMBD)
            shapes[f"blk.{i}.{name}.bias"] = (N_EMBD,)
        for name in ("attn_output_norm", "layer_output_norm"):
            shapes[f"blk.{i}.{name}.weight"] = (N_EMBD,)
            shapes[f"blk.{i}.{name}.bias"] = (N_EMBD,)
        shapes[f"blk.{i}.ffn_up.weight"] = (N_EMBD, N_FF)
        shapes[f"blk.{i}.ffn_up.bias"] = (N_FF,)
        shapes[f"blk.{i}.ffn_down.weight"] = (N_FF, N_EMBD)
        shapes[f"blk.{i}.ffn_down.bias"] = (N_EMBD,)
    infos, blobs, offset = b"", [], 0
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            data = np.ones(shape[::-1], np.float32)
        else:
            data = (rng.standard_normal(shape[::-1]) * 0.2).astype(np.float32)
        infos += _string(name) + struct.pack("<I", len(shape))
        infos += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", 0, offset)
        raw = data.tobytes()
        raw += b"\0" * (-len(raw) % 32)
        blobs.append(raw)
        offset += len(raw)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(meta)) + b"".join(meta) + infos
    header += b"\0" * (-len(header) % 32)
    path.write_bytes(header + b"".join(blobs))
    return path
