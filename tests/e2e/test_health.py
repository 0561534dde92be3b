"""/health, /ready and /api/v1/health of the real daemon, /v1/models against OpenAI's schema, and
its log after every test that used it: no server error, no model process restarted."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx2 as httpx

from tests.contracts import validate
from tests.e2e.api import GEMMA, SMOL, model_health
from tests.e2e.conftest import ONE_SMALL_MODEL

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.e2e.conftest import Daemon


def test_health_endpoints(daemon: Daemon) -> None:
    resp = httpx.get(daemon.url + "/health", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    resp = httpx.get(daemon.url + "/ready", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["status"] == "ready"
    assert resp.json()["model"] == SMOL
    info = daemon.health()
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["uptime_s"], (int, float)) and info["uptime_s"] > 0
    assert info["default_model"] == SMOL
    memory = info["memory"]
    assert isinstance(memory, dict)
    assert memory["daemon_rss_bytes"] > 0
    assert memory["system_total_bytes"] >= memory["system_available_bytes"] > 0
    # Not run under systemd: no systemd watchdog; the model processes' hang watchdog is on.
    watchdog = info["watchdog"]
    assert watchdog["enabled"] is False and watchdog["since_ping_s"] is None
    assert watchdog["model_hang_timeout_s"] > 0
    backend = info["cpu_backend"]  # the start-up probe's: which llama.cpp CPU backend runs
    assert isinstance(backend, dict) and backend["variant"] not in ("", "none")
    assert isinstance(backend["features"], list)
    models = info["models"]
    assert isinstance(models, list)
    assert sorted(m["name"] for m in models) == sorted([SMOL, GEMMA])
    for m in models:
        assert m["state"] == "ready"
        assert m["error"] is None
        assert isinstance(m["pid"], int)
        assert m["queued"] == 0
        assert m["running"] == 0
        assert m["memory_rss_bytes"] > 0
        # The default measures it at load. Off, SmolLM2's weights (Q4_1, Q8_0: no tiled or
        # repacked kernel) shape a lone answer's steps; Gemma-3's Q4_K weights are tiled.
        assert m["flash_attn"] in ("on", "off")
        alone = m["name"] == SMOL and m["flash_attn"] == "off"
        assert m["exact_steps"] == ("alone" if alone else None)
    by_name = {m["name"]: m for m in models}
    assert by_name[SMOL]["aliases"] == ["smol"]
    assert by_name[SMOL]["parallel"] == 16
    assert by_name[SMOL]["ctx_per_seq"] == 1024
    assert by_name[GEMMA]["parallel"] == 2


def test_model_processes_wait_briefly_then_sleep_at_llama_cpps_barriers(daemon: Daemon) -> None:
    """engine.omp_wait_policy and omp_spin_count reach libgomp in every model process: the
    llama.cpp threads there run on libgomp, which reads them from the environment."""
    for m in daemon.health()["models"]:
        with open(f"/proc/{m['pid']}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert env[b"OMP_WAIT_POLICY"] == b"PASSIVE"
        assert env[b"GOMP_SPINCOUNT"] == b"10000"
        with open(f"/proc/{m['pid']}/maps") as f:
            assert "libgomp" in f.read()


def test_models_list_matches_openai_schema(daemon: Daemon) -> None:
    resp = httpx.get(daemon.url + "/v1/models", timeout=10)
    assert resp.status_code == 200, resp.text
    listed = resp.json()
    assert {SMOL, GEMMA, "smol"} == {m["id"] for m in listed["data"]}  # aliases listed too
    validate("ListModelsResponse", listed)


def test_no_server_errors_logged(daemon: Daemon) -> None:
    """Run last (conftest.py): nothing the tests sent made the daemon fail or a model die."""
    logs = daemon.logs()
    assert "Traceback" not in logs, logs[-5000:]
    server_errors = re.findall(r"path=/(?:v1|api)/\S* status=5\d\d .*", logs)
    assert server_errors == []
    for name in (SMOL, GEMMA):
        assert model_health(daemon, name)["restarts"] == 0


def test_flash_attention_fastest_is_measured_at_load(make_daemon: Callable[..., Daemon]) -> None:
    """`engine.flash_attn = "fastest"`: the model process times both ways at load, logs the
    times and its choice, runs with it (shown in /api/v1/health) and answers."""
    config = ONE_SMALL_MODEL.replace("[engine]\n", '[engine]\nflash_attn = "fastest"\n')
    d = make_daemon(config)
    smol = model_health(d)
    assert smol["flash_attn"] in ("on", "off")
    found = re.search(
        r"llmd\.worker\[smollm2\] flash attention (on|off): steps of 1 and 9 tokens "
        r"after \d+ took [\d.]+ and [\d.]+ ms with it, [\d.]+ and [\d.]+ ms without",
        d.logs(),
    )
    assert found and found.group(1) == smol["flash_attn"], d.logs()[-3000:]
    answer = d.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert answer.choices[0].message.content


def test_flash_attention_set_in_the_config_is_used_without_a_probe(
    make_daemon: Callable[..., Daemon],
) -> None:
    config = ONE_SMALL_MODEL.replace("[engine]\n", '[engine]\nflash_attn = "off"\n')
    d = make_daemon(config)
    smol = model_health(d)
    assert smol["flash_attn"] == "off"
    assert "flash attention off: steps" not in d.logs()  # nothing measured
    answer = d.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert answer.choices[0].message.content
