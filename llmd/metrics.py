"""Prometheus metrics: what the daemon counts per request, and what it reads from the models.

Two sources feed one per-app `CollectorRegistry` (not prometheus-client's global one, so that
several apps in one process, as in tests, never collide):

* `Metrics.observe` is a request observer (`record.OBSERVERS`): when a request ends it
  counts it by endpoint, status, model and key name, adds its tokens, and puts its latency,
  time to first token, time per output token and queue wait into histograms.
* `ModelCollector` renders the models' status view (`llmd.models.status`) at scrape time (no
  background polling): model states, running and waiting sequences, KV cells, memory,
  restarts.
* `CacheCollector` renders the response cache's stats, read (from Redis, perhaps) by the
  scrape's handler just before. An answer from the cache counts in `llmd_cache_requests` but
  not in the token counters and latency histograms, which describe the models' work.

Names start with `llmd_` and carry their unit. Label values are bounded: `model` is a
configured model (requests for unknown models carry model=""), `endpoint` a route pattern,
`key` one of at most `metrics.max_key_labels` key names (then "other").

`/api/v1/health`, the admin API and the systemd status line render the same view, so they
never disagree with the metrics.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from llmd import __version__
from llmd.cache import ResponseCache
from llmd.engine.client import ModelState
from llmd.errors import PermissionDenied
from llmd.models import ModelManager
from llmd.models.status import overview
from llmd.record import RequestRecord
from llmd.settings import Settings
from llmd.settings_provider import SettingsProvider

log = logging.getLogger("llmd.metrics")

# No `_created` series next to every counter and histogram: they double the output (and the
# scrape time) and Prometheus handles counter resets without them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Error codes that mean "refused, not failed": the request was fine, capacity or policy said
# no. Their count by reason is what an operator tunes limits and memory against.
REFUSAL_CODES = frozenset(
    {
        "server_busy",
        "rate_limit_exceeded",
        "insufficient_quota",
        "context_length_exceeded",
        "insufficient_memory",
        "model_not_ready",
        "model_loading",
    }
)
# Entry.state(): a process state, or where a model stands without one.
MODEL_STATES = tuple(
    dict.fromkeys([*(s.value for s in ModelState), "unloaded", "pending", "unloading", "failed"])
)

# CPU serving is slow next to GPUs: a first token after seconds and whole answers after
# minutes are normal, so the buckets reach far beyond the usual web-request ones.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

OTHER_KEY = "other"


class ModelCollector(Collector):
    """Gauges read from the model manager at scrape time."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        view = overview(self.manager)
        mem = view.memory

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("model",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        info = gauge("llmd_build_info", "llmd's version (value 1).", ("version",))
        info.add_metric([__version__], 1)
        yield info
        start = GaugeMetricFamily("llmd_start_time_seconds", "When the daemon started (Unix).")
        start.add_metric([], self.started)
        yield start

        state = gauge("llmd_model_state", "1 for the state each model is in.", ("model", "state"))
        loaded = gauge("llmd_model_loaded", "1 when the model is loaded and serving.")
        running = gauge("llmd_running_sequences", "Sequences being decoded now.")
        waiting = gauge("llmd_waiting_sequences", "Sequences queued for a slot in the engine.")
        inflight = gauge("llmd_requests_in_flight", "Requests submitted to the model, unfinished.")
        slots = gauge("llmd_sequence_slots", "Sequences the model decodes together (parallel).")
        qlimit = gauge("llmd_queue_limit_sequences", "Sequences that may wait beyond the slots.")
        kv_used = gauge("llmd_kv_cells_used", "KV cache cells (tokens) in use.")
        kv_total = gauge("llmd_kv_cells_total", "KV cache cells (tokens) allocated.")
        m_rss = gauge(
            "llmd_model_memory_rss_bytes", "Measured resident memory of the model's process."
        )
        m_est = gauge(
            "llmd_model_memory_estimated_bytes", "Estimated memory of the model (weights and KV)."
        )
        restarts = CounterMetricFamily(
            "llmd_model_restarts",
            "Times the model's process crashed or hung and was restarted.",
            labels=["model"],
        )
        steps = CounterMetricFamily(
            "llmd_engine_steps", "Engine steps (batches decoded).", labels=["model"]
        )
        decoded = CounterMetricFamily(
            "llmd_engine_tokens_processed",
            "Tokens the engine put through the model, prompt and generated, counted step by "
            "step (live load; llmd_*_tokens_total count per request when it ends).",
            labels=["model"],
        )
        fillers = CounterMetricFamily(
            "llmd_engine_filler_tokens",
            "Filler tokens put into free slots between running ones so that a step stays one "
            "pass over the weights (no output; counted in llmd_engine_tokens_processed too).",
            labels=["model"],
        )
        drafted = CounterMetricFamily(
            "llmd_speculative_drafted_tokens",
            "Draft tokens put into steps to be checked (speculative decoding).",
            labels=["model"],
        )
        accepted = CounterMetricFamily(
            "llmd_speculative_accepted_tokens",
            "Draft tokens the model's own choice confirmed: output tokens that cost no step.",
            labels=["model"],
        )
        for s in view.models:
            live = s.live
            steps.add_metric([s.name], live.engine_steps)
            decoded.add_metric([s.name], live.engine_tokens_decoded)
            fillers.add_metric([s.name], live.engine_fillers)
            drafted.add_metric([s.name], live.speculative_drafted)
            accepted.add_metric([s.name], live.speculative_accepted)
            for st in MODEL_STATES:
                state.add_metric([s.name, st], 1.0 if s.state == st else 0.0)
            loaded.add_metric([s.name], 1.0 if s.loaded else 0.0)
            running.add_metric([s.name], live.running)
            waiting.add_metric([s.name], live.waiting)
            inflight.add_metric([s.name], live.requests_in_flight)
            slots.add_metric([s.name], s.slots)
            qlimit.add_metric([s.name], s.queue_limit)
            kv_used.add_metric([s.name], live.kv_cells_used)
            kv_total.add_metric([s.name], live.kv_cells_total)
            if live.rss_bytes is not None:
                m_rss.add_metric([s.name], live.rss_bytes)
            if s.estimated_bytes is not None:
                m_est.add_metric([s.name], s.estimated_bytes)
            restarts.add_metric([s.name], live.restarts)
        yield from (state, loaded, running, waiting, inflight, slots, qlimit, kv_used, kv_total)
        yield from (m_rss, m_est, restarts, steps, decoded, fillers, drafted, accepted)

        count = GaugeMetricFamily("llmd_models_loaded", "Models loaded and serving.")
        count.add_metric([], sum(s.loaded for s in view.models))
        yield count
        configured = GaugeMetricFamily(
            "llmd_models_configured", "Models known: configured, or found in models_dir."
        )
        configured.add_metric([], len(view.models))
        yield configured
        for name, doc, value in (
            ("llmd_memory_budget_bytes", "Memory the models may use together.", mem.budget_bytes),
            ("llmd_memory_used_bytes", "Memory counted against the budget.", mem.used_bytes),
            (
                "llmd_daemon_memory_rss_bytes",
                "Resident memory of the HTTP daemon process.",
                mem.daemon_rss_bytes,
            ),
            (
                "llmd_system_memory_available_bytes",
                "The machine's available memory.",
                mem.system_available_bytes,
            ),
            (
                "llmd_system_memory_total_bytes",
                "The machine's total memory.",
                mem.system_total_bytes,
            ),
        ):
            if value is not None:  # the daemon's RSS may be unreadable
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g


class CacheCollector(Collector):
    """The response cache's size and counters, from the stats its scrape read last."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        for name, doc, field_ in (
            ("llmd_cache_entries", "Answers held by the response cache.", "entries"),
            ("llmd_cache_bytes", "Bytes the response cache holds (Redis: its memory).", "bytes"),
            ("llmd_cache_max_bytes", "The response cache's bound in bytes.", "max_bytes"),
        ):
            if st.get(field_) is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], st[field_])
                yield g
        for name, doc, field_ in (
            ("llmd_cache_evictions", "Entries dropped to stay within the bound.", "evictions"),
            ("llmd_cache_errors", "Cache backend calls that failed or timed out.", "errors"),
            ("llmd_cache_stored", "Answers written to the response cache.", "stored"),
        ):
            if st.get(field_) is not None:
                c = CounterMetricFamily(name, doc)
                c.add_metric([], st[field_])
                yield c
        up = GaugeMetricFamily("llmd_cache_up", "1 when the cache's backend answers.")
        up.add_metric([], 1 if st.get("healthy") else 0)
        yield up


def client_allowed(access: str, remote: str | None) -> bool:
    """`metrics.access`: loopback (default), all, key (the same as all), or none. A unix-socket
    client is local. Once keys are in force the auth middleware has also checked the scrape's
    key (an admin key or one with the metrics right)."""
    if access in ("all", "key"):
        return True
    if access == "none":
        return False
    if not remote:
        return True
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Metrics:
    """The per-app registry, the request observer and the /metrics handler."""

    def __init__(
        self, provider: SettingsProvider, manager: ModelManager, cache: ResponseCache
    ) -> None:
        self._provider = provider
        self.cache = cache
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._keys: set[str] = set()
        self.requests = Counter(
            "llmd_requests",
            "HTTP requests by route, status, model and key name.",
            ["endpoint", "status", "model", "key"],
            registry=r,
        )
        self.refusals = Counter(
            "llmd_refusals",
            "Requests refused for capacity or policy, by reason (error code).",
            ["model", "reason", "key"],
            registry=r,
        )
        tokens = ["model", "key"]
        self.prompt_tokens = Counter(
            "llmd_prompt_tokens", "Prompt tokens read (cached ones included).", tokens, registry=r
        )
        self.cached_tokens = Counter(
            "llmd_cached_prompt_tokens",
            "Prompt tokens reused from the KV cache.",
            tokens,
            registry=r,
        )
        self.completion_tokens = Counter(
            "llmd_completion_tokens", "Tokens generated.", tokens, registry=r
        )
        self.latency = Histogram(
            "llmd_request_duration_seconds",
            "End-to-end time of successful generation requests, queueing included.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmd_time_to_first_token_seconds",
            "From request arrival to its first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "llmd_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request.",
            ["model"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "llmd_queue_wait_seconds",
            "From request arrival until the engine gave it a slot.",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        events = "Model {} done by the model manager."
        self.events = {
            "load": Counter("llmd_model_loads", events.format("loads"), ["model"], registry=r),
            "unload": Counter(
                "llmd_model_unloads", events.format("unloads"), ["model"], registry=r
            ),
            "swap": Counter(
                "llmd_model_swaps",
                "Hot swaps: a new version (file replaced, reload, re-tuned) took over.",
                ["model"],
                registry=r,
            ),
            "load_failed": Counter(
                "llmd_model_load_failures",
                "Loads that failed (a broken file, no memory, the process died while loading).",
                ["model"],
                registry=r,
            ),
        }
        self.cache_requests = Counter(
            "llmd_cache_requests",
            "Generation and embedding requests by the response cache's part: hit, miss, bypass.",
            ["model", "result"],
            registry=r,
        )
        r.register(ModelCollector(manager))
        self.cache_collector = CacheCollector()
        r.register(self.cache_collector)
        # Series exist at 0 from the start for every configured model: Prometheus' rate() and
        # increase() cannot see a counter's first step when its series appears already at 1+
        # (a first burst of refusals would read as zero).
        for name in manager.entries:
            for reason in sorted(REFUSAL_CODES):
                self.refusals.labels(name, reason, "")
            for counter in (self.prompt_tokens, self.cached_tokens, self.completion_tokens):
                counter.labels(name, "")
            for event in self.events.values():
                event.labels(name)
            for result in ("hit", "miss", "bypass"):
                self.cache_requests.labels(name, result)

    @property
    def settings(self) -> Settings:
        """The settings in force now (a reload replaces them in the provider)."""
        return self._provider.current

    def _key(self, name: str | None) -> str:
        if name is None:
            return ""
        if name in self._keys:
            return name
        if len(self._keys) < self.settings.metrics.max_key_labels:
            self._keys.add(name)
            return name
        return OTHER_KEY

    def observe(self, record: RequestRecord) -> None:
        """Request observer: count a finished request (runs on the event loop; O(labels))."""
        model = record.model or ""
        key = self._key(record.key_name)
        self.requests.labels(record.endpoint, str(record.status), model, key).inc()
        if record.error_code in REFUSAL_CODES:
            self.refusals.labels(model, record.error_code, key).inc()
        if record.cache is not None:
            self.cache_requests.labels(model, record.cache).inc()
        if not record.is_generation or record.cache == "hit":
            return
        self.prompt_tokens.labels(model, key).inc(record.prompt_tokens)
        self.cached_tokens.labels(model, key).inc(record.cached_tokens)
        self.completion_tokens.labels(model, key).inc(record.completion_tokens)
        for histogram, value in (
            (self.ttft.labels(model), record.ttft_s),
            (self.tpot.labels(model), record.tpot_s),
            (self.queue_wait.labels(model), record.queue_wait_s),
        ):
            if value is not None:
                histogram.observe(value)
        if record.status < 400 and record.latency_s is not None:
            self.latency.labels(model, record.endpoint).observe(record.latency_s)

    def model_event(self, model: str, event: str, why: str = "") -> None:
        """A ModelManager listener: counts loads, unloads, swaps and failed loads."""
        if event in self.events:  # "remove" (the file is gone) is not counted
            self.events[event].labels(model).inc()

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics in Prometheus' text format."""
        if not client_allowed(self.settings.metrics.access, request.remote):
            raise PermissionDenied(
                "Metrics are not open to this client (see metrics.access in the config).",
                code="metrics_forbidden",
            )
        self.cache_collector.stats = await self.cache.stats(count=False)
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
