"""A model with a draft model (`[models.NAME] draft`) through the real daemon: a draft of the
same family (SmolLM2 re-quantised with `llmd models quantize`) loads with the model and is
counted in its memory estimate; one of another vocabulary (Gemma-3 for SmolLM2), or a missing
file, fails the model's load with the reason in the admin API."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from llmd.gguf import read_model
from tests.e2e.conftest import GEMMA, MODELS, SMOL, start_daemon
from tests.e2e.test_speculative import LIST


def models(url: str) -> dict[str, dict[str, Any]] | None:
    try:
        resp = httpx.get(url + "/api/v1/models", timeout=10)
    except httpx.HTTPError:
        return None
    return {m["name"]: m for m in resp.json()["models"]} if resp.status_code == 200 else None


def settled(url: str) -> dict[str, dict[str, Any]] | None:
    """The listing once the test's models are loaded or failed (the files in models_dir are
    listed too, unloaded)."""
    got = models(url)
    mine = ("plain", "drafted", "mismatched", "missing")
    if got is None or any(got[n]["state"] not in ("ready", "failed") for n in mine if n in got):
        return None
    return got if all(n in got for n in mine) else None


def test_draft_models_load_with_their_model_or_fail_it_saying_why(tmp_path: Path) -> None:
    draft = tmp_path / "smol-q4_0.gguf"
    made = subprocess.run(
        [sys.executable, "-m", "llmd", "models", "quantize", str(MODELS / SMOL), str(draft)]
        + ["--type", "q4_0", "--allow-requantize"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    config = f"""
[engine]
ctx_per_seq = 512
parallel = 2

[engine.speculative]
adaptive = false  # every draft checked: whether drafting pays is timing, not under test

[models.plain]
path = "{SMOL}"

[models.drafted]
path = "{SMOL}"
draft = "{draft}"

[models.mismatched]
path = "{SMOL}"
draft = "{GEMMA}"

[models.missing]
path = "{SMOL}"
draft = "nothing.gguf"
"""
    checked = tmp_path / "check.toml"
    checked.write_text(f'models_dir = "{MODELS}"\n' + config)
    check = subprocess.run(
        [sys.executable, "-m", "llmd", "check-config", "--config", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert f"model missing: draft file not found: {MODELS / 'nothing.gguf'}" in check.stderr
    assert "model drafted" not in check.stderr and "model mismatched" not in check.stderr

    d = start_daemon(tmp_path, config, wait_ready=False)
    try:
        deadline = time.monotonic() + 120
        got = None
        while got is None and time.monotonic() < deadline:
            got = settled(d.url)
            time.sleep(0.2)
        assert got is not None, {n: m["state"] for n, m in (models(d.url) or {}).items()}
        assert got["plain"]["state"] == got["drafted"]["state"] == "ready", got
        assert got["mismatched"]["state"] == got["missing"]["state"] == "failed", got

        error = got["mismatched"]["error"]
        assert f"draft model {MODELS / GEMMA} does not share the vocabulary of" in error
        assert str(MODELS / SMOL) in error and "token 5 is" in error
        assert "draft model file not found" in got["missing"]["error"]
        assert "nothing.gguf" in got["missing"]["error"]
        resp = httpx.post(
            d.url + "/v1/completions",
            json={"model": "mismatched", "prompt": "Hi", "max_tokens": 2},
            timeout=60,
        )
        assert resp.status_code == 503 and "vocabulary" in resp.json()["error"]["message"]

        # The draft model drafts, the model verifies: the same greedy text as without
        # speculation, with drafts made and confirmed.
        answers = []
        for spec in (False, True):
            resp = httpx.post(
                d.url + "/v1/completions",
                json={"model": "drafted", "prompt": LIST, "max_tokens": 64, "temperature": 0}
                | {"speculative": spec},
                headers={"Cache-Control": "no-cache"},
                timeout=120,
            )
            assert resp.status_code == 200
            answers.append(resp.json()["choices"][0]["text"])
        assert answers[0] and answers[1] == answers[0]
        health = httpx.get(d.url + "/api/v1/health", timeout=10).json()
        drafted_health = next(m for m in health["models"] if m["name"] == "drafted")
        assert drafted_health["speculative"]["accepted_tokens"] > 10, drafted_health

        plain, drafted = got["plain"]["memory"], got["drafted"]["memory"]
        extra = read_model(draft)
        assert drafted["weights_bytes"] == plain["weights_bytes"] + extra.tensor_bytes
        kv = extra.info.kv_bytes_per_token() * 512 * 2
        assert drafted["kv_cache_bytes"] == plain["kv_cache_bytes"] + kv
        assert drafted["other_bytes"] > plain["other_bytes"]
    finally:
        d.stop()
