"""The GGUF header reader and the memory estimate (llmd/gguf.py), on synthetic files and the real
models' headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bench.daemon import GEMMA, MODELS, SMOL
from llmd.gguf import GGUFError, Incomplete, estimate, read_gguf, read_model
from llmd.watch import find_models
from tests import tinybert


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def make_gguf(
    tensors: list[tuple[str, list[int], int]], meta: dict[str, int | str], pad_data: bool = True
) -> bytes:
    """A small GGUF v3 file: uint32 and string metadata, tensors of the given ggml types."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        if isinstance(value, str):
            out += _str(key) + struct.pack("<I", 8) + _str(value)
        else:
            out += _str(key) + struct.pack("<I", 4) + struct.pack("<I", value)
    offset = 0
    sizes = []
    for name, dims, ttype in tensors:
        elements = 1
        for dim in dims:
            elements *= dim
        nbytes = elements * 4 if ttype == 0 else elements // 32 * 34  # F32 or Q8_0
        out += _str(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
        sizes.append(nbytes)
        offset += (nbytes + 31) // 32 * 32
    out += b"\0" * (-len(out) % 32)
    if pad_data:
        out += b"\1" * offset
    return out


META: dict[str, int | str] = {
    "general.architecture": "llama",
    "general.file_type": 7,
    "llama.block_count": 2,
    "llama.embedding_length": 64,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.context_length": 4096,
}
TENSORS = [("tok_embd.weight", [64, 100], 8), ("norm.weight", [64], 0)]


def test_synthetic_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(make_gguf(TENSORS, META))
    info = read_gguf(path)
    assert info.architecture == "llama"
    assert info.quantization == "Q8_0"
    assert info.context_length == 4096
    assert info.parameters == 64 * 100 + 64
    assert info.tensor_bytes == 64 * 100 // 32 * 34 + 64 * 4
    # 2 layers x 2 KV heads x (16 + 16) head sizes x 2 bytes (f16)
    assert info.kv_bytes_per_token("f16") == 2 * 2 * 32 * 2
    assert info.kv_bytes_per_token("f32") == 2 * 2 * 32 * 4
    assert info.expected_size <= path.stat().st_size


def test_cut_file_is_incomplete_not_corrupt(tmp_path: Path) -> None:
    data = make_gguf(TENSORS, META)
    path = tmp_path / "cut.gguf"
    for size in (3, 20, len(data) - 100):
        path.write_bytes(data[:size])
        with pytest.raises(Incomplete):
            read_model(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"tjgg\x01\x00\x00\x00" + b"\0" * 64, "convert_llama_ggml_to_gguf.py"),
        (b"lmgg" + b"\0" * 64, "legacy GGML file (format 'ggml'"),
        (b"\x7fELF" + b"\0" * 64, "not a GGUF file"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 64, "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0), "impossible tensor or key counts"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str("k") + struct.pack("<I", 99), "type 99"),
    ],
)
def test_bad_files_say_why(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError) as err:
        read_model(path)
    assert not isinstance(err.value, Incomplete)
    assert reason in str(err.value)


def test_split_model_needs_all_parts(tmp_path: Path) -> None:
    part = make_gguf(TENSORS, META)
    (tmp_path / "big-00001-of-00002.gguf").write_bytes(part)
    assert [c.name for c in find_models(tmp_path)] == ["big"]
    with pytest.raises(Incomplete, match="missing part"):
        read_model(tmp_path / "big-00001-of-00002.gguf")
    (tmp_path / "big-00002-of-00002.gguf").write_bytes(part)
    model = read_model(tmp_path / "big-00001-of-00002.gguf")
    assert len(model.parts) == 2
    assert model.tensor_bytes == 2 * read_gguf(tmp_path / "big-00002-of-00002.gguf").tensor_bytes


def test_real_models_metadata() -> None:
    smol = read_model(MODELS / SMOL)
    assert smol.info.architecture == "llama" and smol.info.quantization == "Q4_1"
    assert smol.info.n_layer == 30 and smol.info.n_vocab == 49152
    assert smol.file_size == (MODELS / SMOL).stat().st_size
    gemma = read_model(MODELS / GEMMA)
    assert gemma.info.architecture == "gemma3" and gemma.info.quantization == "Q4_K_M"
    assert gemma.info.context_length == 32768
    assert 250e6 < gemma.parameters < 300e6


def test_estimate_parts() -> None:
    smol = read_model(MODELS / SMOL)
    small = estimate(smol, 512, 2, 256)
    big = estimate(smol, 2048, 16, 256)
    assert small.weights == big.weights == smol.tensor_bytes
    # KV cache: 30 layers x 3 KV heads x (64 + 64) x 2 bytes per token.
    assert small.kv_cache == 23040 * 512 * 2
    assert big.kv_cache == 23040 * 2048 * 16
    assert estimate(smol, 512, 2, 256, "q8_0").kv_cache < small.kv_cache
    assert big.total > small.total > smol.tensor_bytes


def test_a_draft_model_adds_its_weights_kv_cache_and_other_costs() -> None:
    smol, gemma = read_model(MODELS / SMOL), read_model(MODELS / GEMMA)
    alone = estimate(smol, 1024, 4, 256)
    draft = estimate(gemma, 1024, 4, 256)
    both = estimate(smol, 1024, 4, 256, draft=gemma)
    assert both.weights == smol.tensor_bytes + gemma.tensor_bytes
    # Its own KV cache, as big as its layers make it, for the same contexts and slots.
    assert both.kv_cache == (23040 + gemma.info.kv_bytes_per_token()) * 1024 * 4
    assert both.kv_cache == alone.kv_cache + draft.kv_cache
    # Its vocabulary tables, logits, graph scratch and llama.cpp's own: a whole model's.
    assert both.compute == alone.compute + draft.compute
    assert both.total == alone.total + draft.total


def test_encoder_only_model_has_no_kv_cache(tmp_path: Path) -> None:
    bert = read_model(tinybert.write(tmp_path / "tiny-bert.gguf"))
    assert bert.info.encoder_only and bert.info.architecture == "bert"
    est = estimate(bert, 1024, 4, 256)
    assert est.kv_cache == 0
    # Every token of a step is an output row: a micro-batch of rows, not one per sequence.
    assert est.compute > estimate(bert, 1024, 4, 64).compute + 4 * 192 * len(tinybert.vocabulary())
    assert not read_model(MODELS / SMOL).info.encoder_only
