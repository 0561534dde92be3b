"""The models directory as files (llmd/watch.py): which files are models, and their names."""

from __future__ import annotations

from pathlib import Path

from llmd.watch import find_models, model_name


def test_names_from_files(tmp_path: Path) -> None:
    assert model_name(Path("Qwen2.5 7B (q4).gguf")) == "Qwen2.5-7B--q4-"
    for name in ("a.gguf", ".hidden.gguf", "b.gguf.part", "c.tmp", "d-00002-of-00003.gguf"):
        (tmp_path / name).write_bytes(b"")
    assert [c.name for c in find_models(tmp_path)] == ["a"]
