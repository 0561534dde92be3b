"""Models from a watched directory, on-demand loading, keep-alive, the memory budget, the
admin API and CLI, quantization: through the real daemon with the real models.

Every test copies the model files it needs into its own directory (tmp_path): the shared
models/ folder is never written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil
import pytest

from tests.e2e.conftest import GEMMA, MODELS, SMOL, Daemon, start_daemon

SMOL_NAME = SMOL.removesuffix(".gguf")
GEMMA_NAME = GEMMA.removesuffix(".gguf")


def wait_for(predicate: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached in {seconds} s: {what}")


def start_dir_daemon(tmp: Path, models_dir: Path, config: str = "") -> Daemon:
    """A daemon of the test's own, watching `models_dir`; returns once its API answers."""
    tmp.mkdir(parents=True, exist_ok=True)
    d = start_daemon(tmp, config, wait_ready=False, models_dir=models_dir)
    wait_for(lambda: listing(d) is not None, 60, "admin API up")
    return d


def listing(d: Daemon) -> dict[str, dict[str, Any]] | None:
    try:
        resp = httpx.get(d.url + "/api/v1/models", timeout=10)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return {m["name"]: m for m in resp.json()["models"]}


def model(d: Daemon, name: str) -> dict[str, Any]:
    got = listing(d)
    assert got is not None and name in got, got
    return got[name]


def served_ids(d: Daemon) -> list[str]:
    return [m["id"] for m in httpx.get(d.url + "/v1/models", timeout=10).json()["data"]]


def complete(d: Daemon, name: str, **kw: Any) -> httpx.Response:
    body = {"model": name, "prompt": "Once upon a time", "max_tokens": 4, **kw}
    return httpx.post(d.url + "/v1/completions", json=body, timeout=120)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def copy_in(src: Path, dst: Path) -> None:
    """Copy as an operator should: to a hidden name, then rename into place."""
    tmp = dst.with_name("." + dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def models_dir_with(tmp_path: Path, *names: str) -> Path:
    """A fresh `models` folder in `tmp_path` holding the named model files, copied in."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for name in names:
        copy_in(MODELS / name, models_dir / name)
    return models_dir


SMALL = """
[engine]
ctx_per_seq = 512
parallel = 2
"""


def test_slow_copy_is_served_only_when_complete_then_loads_on_demand(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path)
    d = start_dir_daemon(tmp_path / "d", models_dir, SMALL + "[loading]\nsettle_s = 0.2\n")
    try:
        assert listing(d) == {}
        src = (MODELS / SMOL).read_bytes()
        dst = models_dir / SMOL
        cuts = [len(src) * i // 6 for i in range(7)]
        with dst.open("wb") as out:
            for start, end in zip(cuts, cuts[1:], strict=False):
                if start:
                    # Longer than settle_s: only the tensor table tells the copy is not done.
                    time.sleep(0.6)
                    assert SMOL_NAME not in served_ids(d)
                    assert listing(d) == {}, "a half-written file was picked up"
                out.write(src[start:end])
                out.flush()
        wait_for(lambda: SMOL_NAME in served_ids(d), 30, "new file listed")
        info = model(d, SMOL_NAME)
        assert info["state"] == "unloaded" and info["pid"] is None
        assert info["quantization"] == "Q4_1" and info["architecture"] == "llama"
        assert info["file_size_bytes"] == len(src)
        assert info["parameters"] > 100_000_000
        assert info["context_length"] == 8192
        # Load on demand: the first request loads it and is served.
        resp = complete(d, SMOL_NAME)
        assert resp.status_code == 200, resp.text
        info = model(d, SMOL_NAME)
        assert info["state"] == "ready" and isinstance(info["pid"], int)
        assert "failed" not in d.logs()
    finally:
        d.stop()


def test_two_models_concurrently_keep_alive_and_admin(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path, SMOL, GEMMA)
    d = start_dir_daemon(tmp_path / "d", models_dir, SMALL)
    try:
        wait_for(lambda: len(listing(d) or {}) == 2, 30, "both listed")
        results: dict[str, int] = {}

        def one(name: str) -> None:
            results[name] = complete(d, name, max_tokens=16).status_code

        threads = [threading.Thread(target=one, args=(n,)) for n in (SMOL_NAME, GEMMA_NAME)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == {SMOL_NAME: 200, GEMMA_NAME: 200}
        both = listing(d)
        assert both is not None
        for name in (SMOL_NAME, GEMMA_NAME):
            assert both[name]["state"] == "ready"
            assert both[name]["memory"]["measured_bytes"] > both[name]["memory"]["weights_bytes"]
        # Per request keep_alive 0: unloaded as soon as the request ends, process gone.
        pid = both[GEMMA_NAME]["pid"]
        assert complete(d, GEMMA_NAME, keep_alive=0).status_code == 200
        wait_for(lambda: model(d, GEMMA_NAME)["state"] == "unloaded", 20, "keep_alive 0")
        wait_for(lambda: gone(pid), 20, "gemma process gone")
        # Keep-alive set through the admin API expires and frees the memory.
        used_before = httpx.get(d.url + "/api/v1/models", timeout=10).json()["memory"]
        pid = model(d, SMOL_NAME)["pid"]
        resp = httpx.post(
            d.url + f"/api/v1/models/{SMOL_NAME}/keep_alive", json={"keep_alive": "1s"}
        )
        assert resp.status_code == 200 and resp.json()["keep_alive_s"] == 1
        wait_for(lambda: model(d, SMOL_NAME)["state"] == "unloaded", 20, "keep-alive expiry")
        wait_for(lambda: gone(pid), 20, "smol process gone")
        used_after = httpx.get(d.url + "/api/v1/models", timeout=10).json()["memory"]
        assert used_after["used_bytes"] < used_before["used_bytes"]
        assert used_after["used_bytes"] == 0
        assert "keep-alive expired" in d.logs()
        # Admin load, pin (stays despite keep-alive), unload, reload, bad input.
        resp = httpx.post(d.url + f"/api/v1/models/{SMOL_NAME}/load", timeout=60)
        assert resp.status_code == 200 and resp.json()["state"] == "ready"
        resp = httpx.post(d.url + f"/api/v1/models/{SMOL_NAME}/pin", json={"pinned": True})
        assert resp.status_code == 200 and resp.json()["pinned"] is True
        time.sleep(2.5)
        assert model(d, SMOL_NAME)["state"] == "ready"
        pid = model(d, SMOL_NAME)["pid"]
        resp = httpx.post(d.url + f"/api/v1/models/{SMOL_NAME}/reload", timeout=60)
        assert resp.status_code == 200 and resp.json()["pid"] != pid
        wait_for(lambda: gone(pid), 20, "old process gone after reload")
        resp = httpx.post(d.url + f"/api/v1/models/{SMOL_NAME}/unload", timeout=60)
        assert resp.status_code == 200 and resp.json()["state"] == "unloaded"
        resp = httpx.post(
            d.url + f"/api/v1/models/{SMOL_NAME}/keep_alive", json={"keep_alive": "soon"}
        )
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "keep_alive"
        resp = complete(d, SMOL_NAME, keep_alive="later")
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "keep_alive"
        resp = httpx.post(d.url + "/api/v1/models/nope/load", timeout=10)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
        # The CLI lists through the same API.
        out = run_cli("models", "list", "--url", d.url)
        assert out.returncode == 0, out.stderr
        assert SMOL_NAME in out.stdout and GEMMA_NAME in out.stdout
        assert "loaded" in d.logs() and "unloaded" in d.logs()
        # The audit log holds both: what an admin asked for, and what the daemon did itself.
        audit = httpx.get(d.url + "/api/v1/audit", params={"limit": 1000}, timeout=10).json()
        smol = [(e["actor"], e["action"]) for e in audit["data"] if e["target"] == SMOL_NAME]
        for entry in [
            ("llmd", "model.load"),
            ("llmd", "model.unload"),
            ("llmd", "model.swap"),
            ("local", "model.keep_alive"),
            ("local", "model.load_requested"),
            ("local", "model.pin"),
            ("local", "model.reload_requested"),
            ("local", "model.unload_requested"),
        ]:
            assert entry in smol, (entry, smol)
        unloads = [e for e in audit["data"] if e["action"] == "model.unload"]
        assert any("keep-alive" in (e["detail"] or {}).get("why", "") for e in unloads), unloads
        # The same events counted for Prometheus.
        metrics = httpx.get(d.url + "/metrics", timeout=10).text
        for name, at_least in (("loads", 2), ("unloads", 3), ("swaps", 1)):
            match = re.search(rf'llmd_model_{name}_total{{model="{SMOL_NAME}"}} (\S+)', metrics)
            assert match and float(match.group(1)) >= at_least, (name, match)
    finally:
        d.stop()


def test_budget_evicts_idle_lru_and_refuses_too_large(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path, SMOL, GEMMA)
    config = (
        SMALL
        + """
[memory]
budget = "520MB"

[models.huge]
path = "gemma-3-270m-q4_k_m.gguf"
ctx_per_seq = 8192
parallel = 16
preload = false
"""
    )
    d = start_dir_daemon(tmp_path / "d", models_dir, config)
    try:
        wait_for(lambda: len(listing(d) or {}) == 2, 30, "listed")
        names = listing(d)
        assert names is not None and set(names) == {SMOL_NAME, "huge"}
        assert complete(d, SMOL_NAME).status_code == 200
        smol_pid = model(d, SMOL_NAME)["pid"]
        # huge's table names the gemma file: the same model, with its settings, never twice.
        assert GEMMA_NAME not in served_ids(d)
        resp = complete(d, "huge")
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "insufficient_memory"
        assert "budget is 496 MiB" in error["message"] and "KV cache" in error["message"]
        assert int(resp.headers["Retry-After"]) > 0
        # smol was idle, but unloading it would not have been enough: it is left alone.
        assert model(d, SMOL_NAME)["pid"] == smol_pid
        assert complete(d, SMOL_NAME).status_code == 200
    finally:
        d.stop()
    # A budget that fits either model but not both: the idle one is unloaded first.
    config = SMALL + '\n[memory]\nbudget = "520MB"\n'
    d = start_dir_daemon(tmp_path / "d2", models_dir, config)
    try:
        wait_for(lambda: len(listing(d) or {}) == 2, 30, "listed")
        assert complete(d, SMOL_NAME).status_code == 200
        smol_pid = model(d, SMOL_NAME)["pid"]
        assert complete(d, GEMMA_NAME).status_code == 200
        assert model(d, SMOL_NAME)["state"] == "unloaded"
        assert gone(smol_pid)
        assert "least recently used" in d.logs()
        memory = httpx.get(d.url + "/api/v1/models", timeout=10).json()["memory"]
        assert 0 < memory["used_bytes"] <= memory["budget_bytes"]
    finally:
        d.stop()


def test_hot_swap_under_eight_clients_and_delete_drains(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path, SMOL)
    d = start_dir_daemon(tmp_path / "d", models_dir, "[engine]\nctx_per_seq = 512\nparallel = 8\n")
    try:
        wait_for(lambda: SMOL_NAME in served_ids(d), 30, "listed")
        assert complete(d, SMOL_NAME).status_code == 200
        old_pid = model(d, SMOL_NAME)["pid"]
        stop = threading.Event()
        statuses: list[int] = []
        errors: list[str] = []

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    body = {
                        "model": SMOL_NAME,
                        "prompt": "The weather today",
                        "max_tokens": 12,
                        "stream": True,
                    }
                    try:
                        with http.stream("POST", d.url + "/v1/completions", json=body) as r:
                            text = "".join(r.iter_text())
                        statuses.append(r.status_code)
                        if r.status_code != 200 or "[DONE]" not in text or '"error"' in text:
                            errors.append(f"{r.status_code} {text[-300:]}")
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))

        clients = [threading.Thread(target=client) for _ in range(8)]
        for t in clients:
            t.start()
        wait_for(lambda: len(statuses) >= 16, 120, "requests flowing")
        # A new version of the file, renamed into place (mv over the old one).
        copy_in(MODELS / SMOL, models_dir / SMOL)
        wait_for(lambda: model(d, SMOL_NAME)["pid"] not in (None, old_pid), 60, "swapped")
        wait_for(lambda: gone(old_pid), 60, "old version drained and ended")
        done = len(statuses)
        wait_for(lambda: len(statuses) >= done + 16, 120, "requests on the new version")
        stop.set()
        for t in clients:
            t.join(120)
        assert errors == []
        assert set(statuses) == {200}
        assert "hot swap" in d.logs()

        # Deleting the file: a request in flight finishes, then the model is gone.
        result: dict[str, Any] = {}

        def long_request() -> None:
            resp = complete(d, SMOL_NAME, max_tokens=200, ignore_eos=True)
            result["status"] = resp.status_code
            result["body"] = resp.json()

        worker = threading.Thread(target=long_request)
        worker.start()
        wait_for(lambda: model(d, SMOL_NAME)["running"] == 1, 30, "long request running")
        (models_dir / SMOL).unlink()
        wait_for(lambda: SMOL_NAME not in served_ids(d), 30, "removed from the list")
        resp = complete(d, SMOL_NAME)
        assert resp.status_code == 404
        worker.join(120)
        assert result["status"] == 200, result
        assert result["body"]["usage"]["completion_tokens"] == 200
        wait_for(lambda: listing(d) == {}, 30, "gone from the admin list after draining")
    finally:
        d.stop()


LEGACY = b"tjgg" + b"\x01\x00\x00\x00" + b"\x00" * 256


def test_bad_files_are_reported_failed_while_the_rest_serves(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path, SMOL)
    (models_dir / "legacy.gguf").write_bytes(LEGACY)
    (models_dir / "notgguf.gguf").write_bytes(b"PK\x03\x04 this is a zip file" * 100)
    (models_dir / "truncated.gguf").write_bytes((MODELS / SMOL).read_bytes()[:5_000_000])
    corrupt = bytearray((MODELS / SMOL).read_bytes()[:4096])
    corrupt[8:16] = (2**40).to_bytes(8, "little")  # an impossible tensor count
    (models_dir / "corrupt.gguf").write_bytes(bytes(corrupt))
    d = start_dir_daemon(tmp_path / "d", models_dir, SMALL)
    try:
        got = wait_for(lambda: (listing(d) or {}) if len(listing(d) or {}) == 5 else None, 30)
        for name in ("legacy", "notgguf", "truncated", "corrupt"):
            assert got[name]["state"] == "failed", got[name]
        assert "convert_llama_ggml_to_gguf.py" in got["legacy"]["error"]
        assert "not a GGUF file" in got["notgguf"]["error"]
        assert "truncated" in got["truncated"]["error"]
        assert "corrupt" in got["corrupt"]["error"]
        assert "legacy GGML file" in d.logs()
        assert served_ids(d) == [SMOL_NAME]
        resp = complete(d, "legacy")
        assert resp.status_code == 503 and "convert" in resp.json()["error"]["message"]
        assert complete(d, SMOL_NAME).status_code == 200
    finally:
        d.stop()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quantize_refusals_and_serving_the_result(tmp_path: Path) -> None:
    src = MODELS / SMOL
    out = run_cli("models", "quantize", str(src), str(tmp_path / "x.gguf"), "--type", "q9_z")
    assert out.returncode == 2 and "unknown quantization type 'q9_z'" in out.stderr
    out = run_cli("models", "quantize", str(src), str(src), "--type", "q8_0", "--allow-requantize")
    assert out.returncode == 2 and "would overwrite the input" in out.stderr
    out = run_cli("models", "quantize", str(src), str(tmp_path / "x.gguf"), "--type", "q8_0")
    assert out.returncode == 2 and "already quantized (Q4_1)" in out.stderr
    assert "--allow-requantize" in out.stderr
    assert not (tmp_path / "x.gguf").exists()

    models_dir = models_dir_with(tmp_path)
    d = start_dir_daemon(tmp_path / "d", models_dir, SMALL)
    try:
        dst = models_dir / "smol-q8.gguf"
        out = run_cli(
            "models", "quantize", str(src), str(dst), "--type", "q8_0", "--allow-requantize"
        )
        assert out.returncode == 0, out.stderr
        assert "tensor" in out.stderr and "done" in out.stderr
        wait_for(lambda: "smol-q8" in served_ids(d), 30, "quantized model listed")
        info = model(d, "smol-q8")
        assert info["quantization"] == "Q8_0"
        assert info["file_size_bytes"] > src.stat().st_size
        resp = complete(d, "smol-q8", temperature=0)
        assert resp.status_code == 200 and resp.json()["choices"][0]["text"]
    finally:
        d.stop()


def test_plan_cli_and_api(tmp_path: Path) -> None:
    models_dir = models_dir_with(tmp_path, SMOL, GEMMA)
    config = tmp_path / "llmd.toml"
    config.write_text(f'models_dir = "{models_dir}"\n[memory]\nbudget = "600MB"\n')
    out = run_cli("models", "plan", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    import json

    plan = json.loads(out.stdout)
    rows = {r["name"]: r for r in plan["models"]}
    assert set(rows) == {SMOL_NAME, GEMMA_NAME}
    # At the default engine settings (2048 x 8) SmolLM2 takes ~550 MB and Gemma ~670 MB:
    # only SmolLM2 fits a 600 MB budget; Gemma fits alone only at a smaller context.
    assert plan["memory"]["budget_bytes"] == 600_000_000
    assert rows[SMOL_NAME]["fits_alone"] is True
    assert rows[GEMMA_NAME]["fits_alone"] is False
    assert plan["together"]["all_fit"] is False
    assert plan["together"]["resident"] == [SMOL_NAME]
    assert rows[SMOL_NAME]["kv_bytes_per_token"] == 30 * 2 * 3 * 64 * 2
    assert rows[GEMMA_NAME]["max_ctx_per_seq_alone"]["1"] > 0
    out = run_cli("models", "plan", "--config", str(config))
    assert out.returncode == 0 and "load only by unloading idle ones" in out.stdout

    d = start_dir_daemon(tmp_path / "d", models_dir, '[memory]\nbudget = "600MB"\n')
    try:
        wait_for(lambda: len(listing(d) or {}) == 2, 30, "listed")
        api_plan = httpx.get(d.url + "/api/v1/models/plan", timeout=10).json()
        assert {r["name"] for r in api_plan["models"]} == {SMOL_NAME, GEMMA_NAME}
        assert api_plan["together"] == plan["together"]
    finally:
        d.stop()


# Ends with -1: the session daemon's model stays loaded as it was.
@pytest.mark.parametrize("value", ["5m", 300, "300", "1h30m", 2.5, "-1", -1])
def test_request_keep_alive_forms_are_accepted(daemon: Daemon, value: object) -> None:
    resp = httpx.post(
        daemon.url + "/v1/chat/completions",
        json={
            "model": "smol",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "keep_alive": value,
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text


def test_apply_settings_adds_retunes_and_removes_without_dropping_requests(
    tmp_path: Path,
) -> None:
    """What SIGHUP does (issue 5 wires the signal): ModelManager.apply_settings in-process."""
    import asyncio

    from llmd.models import ModelManager
    from llmd.models.status import overview
    from llmd.settings_file import load_settings

    models_dir = models_dir_with(tmp_path, SMOL, GEMMA)
    common = {"models_dir": str(models_dir), "engine.ctx_per_seq": 512, "engine.parallel": 2}
    first = load_settings(None, {**common, "models.a.path": SMOL})
    second = load_settings(
        None,
        {**common, "models.a.path": SMOL, "models.a.parallel": 3, "models.b.path": GEMMA},
    )
    third = load_settings(None, {**common, "models.b.path": GEMMA})

    async def until(predicate: Callable[[], bool], what: str) -> None:
        for _ in range(600):
            if predicate():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(what)

    async def main() -> None:
        manager = ModelManager(first)
        await manager.start()
        try:
            assert set(manager.entries) == {"a", GEMMA_NAME}
            a = manager.entries["a"]
            assert a.current is not None and a.current.process.state == "ready"
            old_pid = a.current.process.pid
            async with manager.use("a") as held:  # a request in flight across the reload
                await manager.apply_settings(second)
                await until(
                    lambda: a.current is not None and a.current.process.pid != old_pid,
                    "re-tuned a swapped in",
                )
                assert a.current is not None and a.current.process.options.load.parallel == 3
                assert held.process.pid == old_pid and held.process.state == "ready"
                # gemma's file is now model b (preloaded), no longer a plain file entry.
                assert set(manager.entries) == {"a", "b"}
                assert manager.entries["b"].current is not None
            await until(lambda: gone(old_pid or 0), "old a drained and ended")
            view = overview(manager)
            assert sum(1 for m in view.models if m.loaded) == 2
            assert manager.memory_used_bytes() > 0
            assert manager.memory_budget_bytes > manager.memory_used_bytes()
            assert {m.name for m in view.models} == {"a", "b"}
            new_pid = a.current.process.pid if a.current else None
            await manager.apply_settings(third)
            await until(lambda: gone(new_pid or 0), "removed a drained")
            # The file is still in the directory: it is served under its own name again.
            await until(lambda: SMOL_NAME in manager.entries, "smol back as a plain file")
            assert "a" not in manager.entries and "a" not in manager.names
        finally:
            await manager.stop()

    asyncio.run(main())
