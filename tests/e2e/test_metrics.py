"""/metrics, structured logs, health and the deploy files, seen through the real daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2 as httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ROOT, SMOL

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon

SECRET = "tangerine-walrus-saxophone-4417"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: Daemon) -> Samples:
    resp = httpx.get(daemon.url + "/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_all_ready(daemon: Daemon) -> None:
    """/ready covers the default model only; the second one may still be loading."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(m["state"] == "ready" for m in daemon.health()["models"]):  # type: ignore[attr-defined]
            return
        time.sleep(0.2)
    raise AssertionError(daemon.health())


def test_counters_and_histograms_move_by_usage(daemon: Daemon) -> None:
    wait_all_ready(daemon)
    before = scrape(daemon)
    client = daemon.client()
    chat = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Count to five."}], max_tokens=8
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count to five."}],  # same prompt: cache hits
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_usage = [c.usage for c in stream if c.usage is not None][-1]
    comp = client.completions.create(model="gemma3-270m", prompt="The sky is", max_tokens=5)
    missing = httpx.post(
        daemon.url + "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        timeout=10,
    )
    assert missing.status_code == 404
    after = scrape(daemon)

    assert chat.usage is not None and comp.usage is not None
    smol = [chat.usage, stream_usage]
    for name, got in (
        ("llmd_prompt_tokens_total", sum(u.prompt_tokens for u in smol)),
        ("llmd_completion_tokens_total", sum(u.completion_tokens for u in smol)),
        (
            "llmd_cached_prompt_tokens_total",
            sum(u.prompt_tokens_details.cached_tokens for u in smol if u.prompt_tokens_details),
        ),
    ):
        assert delta(before, after, name, model="smollm2", key="") == got, name
    # The engine counts tokens step by step: generated ones, and prompt ones not cached.
    processed = delta(before, after, "llmd_engine_tokens_processed_total", model="smollm2")
    assert sum(u.completion_tokens for u in smol) < processed <= sum(u.total_tokens for u in smol)
    # One request at a time: no free slot between running ones, so no filler (the family is
    # there all the same; fillers themselves: tests/unit/test_scheduler.py).
    fillers = ("llmd_engine_filler_tokens_total", frozenset({("model", "smollm2")}))
    assert fillers in after and delta(before, after, fillers[0], model="smollm2") == 0
    assert stream_usage.prompt_tokens_details is not None
    assert stream_usage.prompt_tokens_details.cached_tokens > 0, "the repeated prompt was cached"
    assert delta(before, after, "llmd_prompt_tokens_total", model="gemma3-270m", key="") == (
        comp.usage.prompt_tokens
    )
    assert delta(before, after, "llmd_completion_tokens_total", model="gemma3-270m", key="") == (
        comp.usage.completion_tokens
    )

    chat_ok = dict(endpoint="/v1/chat/completions", status="200", model="smollm2", key="")
    assert delta(before, after, "llmd_requests_total", **chat_ok) == 2
    comp_ok = dict(endpoint="/v1/completions", status="200", model="gemma3-270m", key="")
    assert delta(before, after, "llmd_requests_total", **comp_ok) == 1
    not_found = dict(endpoint="/v1/chat/completions", status="404", model="", key="")
    assert delta(before, after, "llmd_requests_total", **not_found) == 1
    assert value(after, "llmd_requests_total", endpoint="/metrics", status="200", model="", key="")

    # One observation per successful request in every histogram (TPOT: 2+ tokens each).
    for hist in (
        "llmd_time_to_first_token_seconds",
        "llmd_queue_wait_seconds",
        "llmd_time_per_output_token_seconds",
    ):
        assert delta(before, after, hist + "_count", model="smollm2") == 2, hist
        assert delta(before, after, hist + "_sum", model="smollm2") > 0, hist
        assert delta(before, after, hist + "_bucket", model="smollm2", le="+Inf") == 2, hist
    lat = dict(model="smollm2", endpoint="/v1/chat/completions")
    assert delta(before, after, "llmd_request_duration_seconds_count", **lat) == 2
    # Buckets are cumulative: a request's TTFT cannot be longer than its whole latency.
    ttft = delta(before, after, "llmd_time_to_first_token_seconds_sum", model="smollm2")
    assert ttft <= delta(before, after, "llmd_request_duration_seconds_sum", **lat)
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in after.items()
        if name == "llmd_time_to_first_token_seconds_bucket" and ("model", "smollm2") in labels
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)

    # Series of every configured model exist from the start, so rate() sees a first refusal.
    busy = frozenset(dict(model="gemma3-270m", reason="server_busy", key="").items())
    assert ("llmd_refusals_total", busy) in after
    assert ("llmd_model_loads_total", frozenset({("model", "smollm2")})) in after

    # Gauges read from the models at scrape time.
    assert value(after, "llmd_models_loaded") == 2
    assert value(after, "llmd_model_loaded", model="smollm2") == 1
    assert value(after, "llmd_model_state", model="gemma3-270m", state="ready") == 1
    assert value(after, "llmd_model_state", model="gemma3-270m", state="failed") == 0
    assert value(after, "llmd_sequence_slots", model="gemma3-270m") == 2
    assert value(after, "llmd_queue_limit_sequences", model="smollm2") == 32
    assert value(after, "llmd_kv_cells_total", model="smollm2") == 16 * 1024
    assert value(after, "llmd_model_restarts_total", model="smollm2") == 0
    assert value(after, "llmd_model_memory_rss_bytes", model="smollm2") > 50e6
    assert value(after, "llmd_model_memory_estimated_bytes", model="smollm2") > 50e6
    assert (
        0
        < value(after, "llmd_system_memory_available_bytes")
        <= value(after, "llmd_system_memory_total_bytes")
    )


def test_health_reports_queue_kv_and_memory(daemon: Daemon) -> None:
    wait_all_ready(daemon)
    health = daemon.health()
    models = {m["name"]: m for m in health["models"]}  # type: ignore[attr-defined]
    smol = models["smollm2"]
    assert smol["queue_limit"] == 32 and smol["queued"] == 0 and smol["saturated"] is False
    assert smol["kv_tokens_total"] == 16 * 1024 and 0 <= smol["kv_usage"] <= 1
    assert smol["memory_rss_bytes"] > 50e6 and smol["memory_estimated_bytes"] > 50e6
    assert "budget_bytes" in health["memory"]  # type: ignore[operator]


LOG_CONFIG = f"""
[server]
max_queue = 0
log_prompts = true

[engine]
ctx_per_seq = 512
parallel = 1

[logging]
format = "json"
dir = "logs"
max_bytes = 2048
backup_count = 2

[metrics]
access = "all"

[models.smollm2]
path = "{SMOL}"
"""


def _lines(path: Path) -> list[dict[str, object]]:
    """Every line of a log and of its rotated files."""
    text = "".join(p.read_text() for p in sorted(path.parent.glob(path.name + "*")))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_refusals_saturation_json_logs_and_rotation(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(LOG_CONFIG)
    logs = d.log.parent / "logs"
    before = scrape(d)
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Write a long story about {SECRET}."}],
        "max_tokens": 200,
        "ignore_eos": True,  # sampled, a "long story" may still end early: keep it running
        "stream": True,
    }
    with httpx.stream(
        "POST",
        d.url + "/v1/chat/completions",
        json=body,
        headers={"X-Request-Id": "trace-long-1"},
        timeout=60,
    ) as resp:
        chunks = resp.iter_lines()
        next(line for line in chunks if line.startswith("data:"))  # it is running now
        # One slot and no queue: the next request is refused, and /ready says why.
        busy = httpx.post(
            d.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"X-Request-Id": "trace-busy-2"},
            timeout=10,
        )
        ready = httpx.get(d.url + "/ready", timeout=10)
        for _ in chunks:
            pass
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
    assert ready.status_code == 503 and "saturated" in ready.json()["reason"]
    assert httpx.get(d.url + "/ready", timeout=10).status_code == 200
    after = scrape(d)
    refused = dict(model="smollm2", reason="server_busy", key="")
    assert delta(before, after, "llmd_refusals_total", **refused) == 1

    # Every line is JSON; the request's lines carry its id, the prompt only as log_prompts is on.
    deadline = time.monotonic() + 10  # lines are written by the logging thread: wait for them
    while time.monotonic() < deadline:
        app, access, error = (_lines(logs / n) for n in ("app.log", "access.log", "error.log"))
        if {"trace-long-1", "trace-busy-2"} <= {x["request_id"] for x in access}:
            break
        time.sleep(0.1)
    prompt_lines = [x for x in app if SECRET in str(x["msg"])]
    assert prompt_lines and all(x["request_id"] == "trace-long-1" for x in prompt_lines)
    assert all(x["model"] == "smollm2" for x in prompt_lines)
    done = next(x for x in access if x["request_id"] == "trace-long-1")
    assert done["status"] == 200 and done["completion_tokens"] == 200 and done["stream"] is True
    refusal = next(x for x in access if x["request_id"] == "trace-busy-2")
    assert refusal["status"] == 503 and refusal["error"] == "server_busy"
    assert any(x["request_id"] == "trace-busy-2" and x["level"] == "warning" for x in error)
    assert all(x["logger"] != "llmd.access" for x in app)
    assert all(x["level"] in ("warning", "error", "critical") for x in error)

    # Rotation: access.log is kept under max_bytes with two old files, no more.
    for i in range(40):
        httpx.get(d.url + "/health", headers={"X-Request-Id": f"fill-{i}"}, timeout=10)
    deadline = time.monotonic() + 10
    while not (logs / "access.log.2").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (logs / "access.log.1").exists() and (logs / "access.log.2").exists()
    assert not (logs / "access.log.3").exists()
    assert all(p.stat().st_size <= 2048 for p in logs.glob("access.log*"))
    assert d.stop() == 0


CLOSED_CONFIG = f"""
[engine]
ctx_per_seq = 512
parallel = 2

[logging]
format = "keyvalue"
dir = "logs"
journal = "auto"

[metrics]
access = "none"

[models.smollm2]
path = "{SMOL}"
"""


def test_no_prompt_text_in_any_log_journal_and_closed_metrics(
    make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # as systemd sets it for a service
    d = make_daemon(CLOSED_CONFIG)
    client = d.client()
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": f"Repeat {SECRET}"}], max_tokens=4
    )
    client.completions.create(model="smollm2", prompt=f"{SECRET} is", max_tokens=4)
    closed = httpx.get(d.url + "/metrics", timeout=10)
    assert closed.status_code == 403
    assert closed.json()["error"]["code"] == "metrics_forbidden"
    assert d.stop() == 0
    logs = d.log.parent / "logs"
    texts = [d.logs()] + [p.read_text() for p in logs.iterdir()]
    assert all(SECRET not in text for text in texts)
    access = (logs / "access.log").read_text().splitlines()
    assert len(access) >= 3 and all(line.startswith("time=") for line in access)
    assert any("prompt_tokens=" in line and "request_id=req-" in line for line in access)
    # Under systemd every stderr line of the daemon starts with a syslog priority.
    ours = [line for line in d.logs().splitlines() if "llmd.worker" not in line]
    assert ours and all(re.match(r"<[0-7]>", line) for line in ours), ours[:5]
    assert any(line.startswith("<6>") and "logger=llmd.access" in line for line in ours)


# -- deploy files --------------------------------------------------------------------------

DEPLOY = ROOT / "deploy"
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "or", "vector", "min", "max", "le",
    "and", "unless", "on", "without", "avg", "count", "up",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (label matchers and strings stripped)."""
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)
    return {n for n in re.findall(r"\bllmd_[a-z_]+", bare)}


def exposed(daemon: Daemon) -> set[str]:
    """Series names /metrics declares, with or without samples yet (e.g. no refusal so far)."""
    text = httpx.get(daemon.url + "/metrics", timeout=10).text
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def _rules() -> list[dict[str, object]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "llmd-alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_validate(daemon: Daemon) -> None:
    promtool = shutil.which("promtool")
    if promtool:  # Debian's `prometheus` package; the parser checks below run either way
        for args in (
            ["check", "rules", str(DEPLOY / "prometheus" / "llmd-alerts.yml")],
            ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
            ["test", "rules", str(DEPLOY / "prometheus" / "llmd-alerts.test.yml")],
        ):
            done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
    names = exposed(daemon)
    rules = _rules()
    assert {r["alert"] for r in rules} >= {
        "LlmdBoxDown", "LlmdModelFailed", "LlmdHighErrorRate", "LlmdQueueSaturated",
        "LlmdSlowFirstToken", "LlmdMemoryNearBudget",
    }  # fmt: skip
    for rule in rules:
        expr = str(rule["expr"])
        assert expr.count("(") == expr.count(")"), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")  # type: ignore[index]
        assert "summary" in rule["annotations"]  # type: ignore[operator]
        # Budget metrics exist only once a budget is configured; everything else is exposed now.
        missing = (
            metric_names(expr) - names - {"llmd_memory_used_bytes", "llmd_memory_budget_bytes"}
        )
        assert not missing, (rule["alert"], missing)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_dashboard_validates(daemon: Daemon) -> None:
    dash = json.loads((DEPLOY / "grafana" / "llmd-dashboard.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    names = exposed(daemon) | {"llmd_memory_used_bytes", "llmd_memory_budget_bytes"}
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("tokens/s", "first token", "output token", "queue", "kv", "memory", "refusals"):
        assert word in titles, word
    for panel in panels:
        assert panel["targets"] and {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            assert not metric_names(expr) - names, (panel["title"], metric_names(expr) - names)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "box", "model"} <= variables
