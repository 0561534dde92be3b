"""The one settings model for llmd's TOML file (llmd/settings_file.py reads the file into it).

Every field carries its type, bounds and a description: `llmd serve --help` and
`llmd check-config` are generated from these, so the docs and the code never disagree.
Durations and byte sizes are parsed in llmd/units.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmd.units import Duration, Size
from llmd.units import parse_duration as parse_duration  # re-exported: tests import them here
from llmd.units import parse_size as parse_size

CacheMode = Literal["on", "shared", "off"]
"""A model's or key's use of the response cache: its own entries, the shared ones, none."""


class _Section(BaseModel):
    # A misspelt key must stop start-up, not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address to listen on. Loopback unless you mean it.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    max_queue: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Requests that may wait per model beyond the running ones; "
        "more are refused at once with 503 and Retry-After.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest a request may take, queueing included, before it is ended.",
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish before cancel."
    )
    default_model: str | None = Field(
        None,
        description="Model used when a request names none, and checked by /ready. "
        "Defaults to the first model table.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the daemon."
    )
    log_prompts: bool = Field(
        False, description="Log prompt and completion text. Off: only sizes and timings are logged."
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate (with its chain) to serve HTTPS (TLS 1.2+) instead of "
        "plain HTTP; needs tls_key. Relative to the config file's directory; read again on "
        "SIGHUP, so a renewed certificate is served without a restart. `llmd tls self-signed` "
        "writes a pair for a first install.",
    )
    tls_key: Path | None = Field(
        None,
        description="PEM private key of tls_cert, unencrypted; readable by the daemon's user "
        "(and nobody else). Relative to the config file's directory; read again on SIGHUP.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together: set both (HTTPS) or neither (plain HTTP)"
            )
        return self


class LoggingSettings(_Section):
    """Where log lines go and what they look like (docs/observability.md)."""

    format: Literal["text", "keyvalue", "json"] = Field(
        "text",
        description="Line format: 'text' (readable), 'keyvalue' (key=value pairs for log "
        "shippers) or 'json' (one object per line). Every line of a request carries its id.",
    )
    level: Literal["debug", "info", "warning", "error"] | None = Field(
        None, description="Log level; unset means server.log_level. Applied again on reload."
    )
    dir: Path | None = Field(
        None,
        description="Folder for app.log, access.log and error.log (rotated by size), besides "
        "stderr; relative to the config file's directory. Unset: stderr only.",
    )
    max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="A log file is rotated when it reaches this size."
    )
    backup_count: int = Field(
        5, ge=0, le=1000, description="Rotated files kept per log (app.log.1 ... app.log.N)."
    )
    journal: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Prefix stderr lines with syslog priorities (<3>, <4>, <6>, <7>) that "
        "journald turns into levels. 'auto': when run by systemd ($JOURNAL_STREAM is set).",
    )


class MetricsSettings(_Section):
    """The Prometheus endpoint (docs/observability.md)."""

    enabled: bool = Field(True, description="Count requests and serve GET /metrics.")
    access: Literal["loopback", "all", "key", "none"] = Field(
        "loopback",
        description="Who may scrape /metrics: clients on this machine only (the default), any "
        "client that can reach the port (for a Prometheus on another box), or nobody (403). "
        "Once keys are in force a scrape also needs an admin key or a key with the metrics "
        "right (Prometheus' `authorization` setting). 'key': the same as 'all'.",
    )
    max_key_labels: int = Field(
        100,
        ge=0,
        le=10_000,
        description="Distinct API key names used as label values; later keys are counted "
        'under key="other" so a flood of keys cannot blow up the series count.',
    )


class SpeculativeSettings(_Section):
    """Speculative decoding (docs/speculative.md): a sequence drafts the tokens likely to come
    next (from its own prompt and output, or a draft model) and one step checks them all; the
    output is exactly what decoding one token at a time gives. Each sequence drafts only while
    the measured step costs say it pays."""

    enabled: bool = Field(
        True, description="Draft and verify where it pays; false: one token a step, always."
    )
    max_draft: int = Field(
        16, ge=1, le=64, description="Most draft tokens one sequence adds to a step."
    )
    adaptive: bool = Field(
        True,
        description="Draft only what the measured step costs and each sequence's acceptance "
        "say pays; false: every draft found is checked, up to max_draft (for measuring, or "
        "a box whose timings mislead the cost model).",
    )
    ngram_min: int = Field(
        2, ge=1, le=16, description="Shortest trailing n-gram looked up for a draft."
    )
    ngram_max: int = Field(
        12,
        ge=1,
        le=16,
        description="Longest match looked for (the longest wins: a quote or an edited "
        "function matches many tokens back, prose that only shares a phrase a few).",
    )

    @model_validator(mode="after")
    def _ngram_order(self) -> SpeculativeSettings:
        if self.ngram_min > self.ngram_max:
            raise ValueError("ngram_min must not be larger than ngram_max")
        return self


class EngineSettings(_Section):
    ctx_per_seq: int = Field(
        2048, ge=64, le=1_048_576, description="Context tokens per sequence (prompt + output)."
    )
    parallel: int = Field(
        8, ge=1, le=256, description="Sequences decoded together in one batch (running slots)."
    )
    batch_size: int = Field(
        256,
        ge=16,
        le=65_536,
        description="Tokens per engine step (llama.cpp n_batch): decode tokens of every running "
        "sequence plus a chunk of pending prompt tokens. Smaller keeps streams smooth while long "
        "prompts are read; larger reads prompts faster.",
    )
    ubatch_size: int = Field(
        256, ge=16, le=65_536, description="Physical micro-batch size (llama.cpp n_ubatch)."
    )
    threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Threads for decoding; 0 = physical cores minus one (decode is bound by "
        "memory bandwidth; the spare core serves HTTP).",
    )
    threads_batch: int = Field(
        0, ge=0, le=1024, description="Threads for prompt processing; 0 = physical cores."
    )
    omp_wait_policy: Literal["passive", "active"] = Field(
        "passive",
        description="OpenMP wait policy for llama.cpp's threads. 'passive' sleeps between steps: "
        "on a small box shared with the HTTP server and other work, spinning threads starve "
        "everything else and make decode erratic (see docs/benchmarks.md).",
    )
    omp_spin_count: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="How long a 'passive' llama.cpp thread spins at a barrier before it sleeps "
        "(libgomp's GOMP_SPINCOUNT, roughly 100,000 a millisecond: 10,000 is ~0.1 ms). A step "
        "crosses a barrier after each of its hundreds of operations; sleeping at once pays a "
        "wake-up at every one (on 2 cores a 2-token step took 47 ms instead of 21, a 2-thread "
        "decode 40 instead of 14; docs/benchmarks.md). 0 sleeps at once. Unused with 'active'.",
    )
    flash_attn: Literal["auto", "on", "off", "fastest"] = Field(
        "fastest",
        description="Flash attention. 'fastest' (the default) measures both at load (a step "
        "of 1 and of 9 tokens after 192 cached ones, 1-3 s) and turns it off where that is "
        "clearly faster: llama.cpp's CPU kernel reads the history row by row for steps under "
        "64 tokens, which on an AVX-512 Xeon made SmolLM2's decode steps 1.7x and its "
        "17-token steps 3.4x slower 700 tokens in (Gemma-3: level). 'auto' is llama.cpp's "
        "choice (on, on a CPU). Off, and where the model's weights take no repacked or tiled "
        "kernel, a request decoding alone gets two rows or more a step, so its text is the "
        "same with and without speculation; batch_invariant makes that hold under any load.",
    )
    batch_invariant: bool = Field(
        False,
        description="Make a token's logits independent of what else its step holds, so greedy "
        "text is the same with and without speculation at any length, a seed's sample the "
        "same whatever else runs, and a reused prefix the same as one read afresh. llama.cpp's "
        "CPU kernels sum in another order for some step shapes than for others (with flash "
        "attention: a lone one-row step once a sequence holds over 256 cells, with two decode "
        "threads or more, and 64 rows of a sequence or more; without: one row against two or "
        "more), and repacked or tiled K-quant kernels by the step's size; measured, greedy "
        "text then parts at near-ties (bench/invariance.py, docs/benchmarks.md). On, weights "
        "use the plain kernels and steps are shaped for the kernels that agree: with flash "
        "attention (flash_attn 'auto', 'on', or what 'fastest' measures) micro-batches stay "
        "under 64 rows and, with two decode threads or more, no step leaves one row of one "
        "sequence alone in one (a filler row beside it, or a draft's last token dropped): "
        "many streams cost nothing, prompts are read without flash attention's tiles; "
        "with flash_attn 'off' every sequence gives each step an even number of rows, faster "
        "for one stream where flash attention is slow (SmolLM2 on an AVX-512 Xeon) but a row a "
        "step more for each sequence without a draft (16 busy streams ran at 0.73x).",
    )
    kv_type: Literal["f16", "q8_0", "f32"] = Field(
        "f16", description="Data type of the KV cache; q8_0 halves its memory."
    )
    load_timeout_s: float = Field(
        120.0, gt=0, description="Longest a model may take to load before it is marked failed."
    )
    hang_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A model process that reports nothing this long while it has work is "
        "considered hung, killed and restarted.",
    )
    restart_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest pause between restarts of a crashing model process."
    )
    speculative: SpeculativeSettings = Field(
        default_factory=SpeculativeSettings, description="Speculative decoding."
    )

    @model_validator(mode="after")
    def _invariant_kernels(self) -> EngineSettings:
        # llama.cpp reads a quantized V cache only with flash attention.
        if self.batch_invariant and self.flash_attn == "off" and self.kv_type == "q8_0":
            raise ValueError(
                'batch_invariant with flash_attn = "off" needs kv_type "f16" or "f32" '
                "(a q8_0 cache needs flash attention)"
            )
        return self


class SamplingDefaults(_Section):
    """Per-model defaults: a request's own values win; where neither gives one, the built-ins
    apply (llmd/sampling.py, where the three are merged)."""

    temperature: float | None = Field(
        None, ge=0, le=2, description="Randomness of the pick; 0 always takes the likeliest."
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="Nucleus: pick among the likeliest tokens adding up to this."
    )
    top_k: int | None = Field(None, ge=0, description="Pick among this many; 0: no limit.")
    min_p: float | None = Field(
        None, ge=0, le=1, description="Drop tokens less likely than this times the likeliest."
    )
    repeat_penalty: float | None = Field(
        None, gt=0, description="Penalty on recent tokens (llama.cpp's repeat penalty); 1: none."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Lowers a token's odds the more often it appeared recently."
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Lowers a token's odds once it appeared recently."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Output tokens per answer; unset: what the context leaves."
    )


class ModelSettings(_Section):
    path: Path = Field(description="GGUF file; relative paths are under server.models_dir.")
    aliases: list[str] = Field(
        default_factory=list, description="Other names requests may use for this model."
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template that replaces the one in the GGUF file "
        "(the template text, or a path to a file holding it).",
    )
    draft: Path | None = Field(
        None,
        description="A smaller GGUF model of the same vocabulary that drafts tokens for "
        "speculative decoding (docs/speculative.md), run in the model's process; relative "
        "paths are under models_dir. Its weights and KV cache count in the model's "
        "memory estimate.",
    )
    ctx_per_seq: int | None = Field(None, ge=64, le=1_048_576, description="Overrides engine.")
    parallel: int | None = Field(None, ge=1, le=256, description="Overrides engine.")
    threads: int | None = Field(None, ge=0, le=1024, description="Overrides engine.")
    sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults, description="Default sampling values."
    )
    keep_alive: Duration | None = Field(
        None,
        description="How long the model stays loaded after its last request: seconds or "
        "'30s', '10m', '1h'; negative = forever, 0 = unload after each request. Default: "
        "forever for a preloaded model, else loading.keep_alive.",
    )
    pinned: bool = Field(
        False, description="Load at start and never unload (not by keep-alive, not to make room)."
    )
    preload: bool = Field(
        True,
        description="Load at start. Models named in this file preload unless false; files "
        "found only in models_dir load on their first request.",
    )
    cache: CacheMode = Field(
        "on",
        description="Response cache for this model: on (each key its own entries), shared "
        "(every key reads every key's entries), off (never cached).",
    )


class MemorySettings(_Section):
    budget: Size = Field(
        "80%",
        description="Memory all loaded models may take together: bytes, '12GiB', '800MB', "
        "or a share of physical RAM ('75%'). Idle models are unloaded (least recently used "
        "first) to make room; a model that still does not fit is refused with 503.",
    )
    reserve: Size = Field(
        "5%",
        description="System memory that must stay available after a load (bytes, '1GiB' or "
        "'5%' of RAM): a load that would leave less is refused, before the machine swaps.",
    )

    def budget_bytes(self, total: int) -> int:
        return parse_size(self.budget, total)

    def reserve_bytes(self, total: int) -> int:
        return parse_size(self.reserve, total)


class LoadingSettings(_Section):
    keep_alive: Duration = Field(
        "5m",
        description="Default keep-alive of models loaded on demand (seconds or '5m', '1h'; "
        "negative = forever, 0 = unload after each request). Requests may set their own "
        "with Ollama's keep_alive field.",
    )
    wait_s: float = Field(
        120.0,
        gt=0,
        description="Longest a request waits for its model to load before a 503 with Retry-After.",
    )
    watch: bool = Field(
        True, description="Watch models_dir: new files are served, replaced ones hot-swapped."
    )
    settle_s: float = Field(
        0.5,
        ge=0,
        le=60,
        description="A new or changed file must keep the same size this long (and hold all "
        "its tensors) before it is used: copies in progress are never read half-written.",
    )
    rescan_s: float = Field(
        10.0, gt=0, description="Full rescan of models_dir this often, in case an event is lost."
    )


class AuthSettings(_Section):
    """API keys and when they are required (docs/auth.md)."""

    keys_file: Path = Field(
        Path("keys.toml"),
        description="The keys file (`llmd keys` writes it; reloaded on SIGHUP and on change); "
        "relative to the config file's directory.",
    )
    require_auth: bool = Field(
        False,
        description="Require a key on every request even with no keys defined and on loopback. "
        "A key is always required once a key exists.",
    )
    allow_unauthenticated_remote: bool = Field(
        False,
        description="Serve without keys while listening beyond loopback and no key exists "
        "(warned at start). Off: such a daemon refuses every request until a key is added.",
    )
    failure_delay_s: float = Field(
        0.05,
        ge=0,
        le=10,
        description="Repeated failed authentications from one address are answered after this "
        "delay, doubled per further failure (up to failure_delay_max_s).",
    )
    failure_delay_max_s: float = Field(
        2.0, ge=0, le=60, description="Longest delay before answering a failed authentication."
    )


class UsageSettings(_Section):
    """Usage records and the audit log in SQLite (docs/auth.md)."""

    enabled: bool = Field(True, description="Record usage and audit entries, enforce quotas.")
    database: Path | None = Field(
        None,
        description="SQLite file. Default: $STATE_DIRECTORY/usage.db (systemd), else "
        "/var/lib/llmd/usage.db when that directory is writable, else usage.db next to the "
        "config file. Relative paths are relative to the config file's directory.",
    )
    on_db_failure: Literal["open", "closed"] = Field(
        "open",
        description="When the database cannot be written: 'open' keeps serving and buffers the "
        "records in memory until it can; 'closed' refuses new requests (503) until it can.",
    )
    buffer_max: int = Field(
        100_000,
        ge=100,
        description="Records held in memory while the database is unwritable; when full, new "
        "requests are refused (503) rather than served unrecorded.",
    )
    log_content: bool = Field(
        False,
        description="Store prompt and answer text with the usage records, for every key "
        "(a key's own log_content turns it on for that key only).",
    )
    content_retention_days: float = Field(
        30.0, gt=0, description="Stored prompt and answer text is deleted after this many days."
    )
    responses_retention_days: float = Field(
        30.0,
        gt=0,
        description="Stored Responses (POST /v1/responses with store: true) are deleted after "
        "this many days, as OpenAI keeps them (docs/responses.md).",
    )


class CacheSettings(_Section):
    """[cache]: answers a request determines (greedy, or a given seed) kept and given again
    without model work (docs/cache.md)."""

    enabled: bool = Field(True, description="Keep and reuse determined answers.")
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="memory (this daemon, bounded by max_bytes) or redis (redis_url: several "
        "daemons on a site share entries).",
    )
    max_bytes: Size = Field(
        "256MiB",
        description="Memory backend: bytes the entries may take (least recently used "
        "out); bytes, '64MiB' or a share of RAM ('2%').",
    )
    ttl: Duration = Field(
        "24h", description="How long an entry is kept: seconds, '10m', '24h'; -1: until evicted."
    )
    max_entry_bytes: Size = Field(
        "4MiB", description="An answer larger than this (encoded) is not kept."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis backend: redis://[:password@]host:port/db, rediss:// for TLS, "
        "unix:///path.sock.",
    )
    redis_timeout_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="A Redis call slower than this is given up: the request is computed as "
        "if there were no cache.",
    )
    count_hit_tokens: bool = Field(
        False,
        description="Charge a hit's tokens to its key's token limits (TPM, monthly) as if "
        "the model had run; requests per minute always count.",
    )
    keys: dict[str, CacheMode] = Field(
        default_factory=dict,
        description="Per API key: on (its own entries, the default), shared (reads and "
        'writes the shared scope), off (never cached). E.g. keys = { batch = "off" }.',
    )

    def ttl_s(self) -> float | None:
        """Seconds an entry lives; None: until evicted (a negative or zero ttl)."""
        return parse_duration(self.ttl) or None


class ConsoleSettings(_Section):
    """[console]: the web console at /ui/ and how long its sign-in lasts (docs/console.md)."""

    enabled: bool = Field(
        True,
        description="Serve the web console at / and /ui/ (read at start; a reload does not "
        "change it). Off: those paths are not served and no session cookie is taken; the API "
        "is unchanged.",
    )
    session_ttl: Duration = Field(
        "8h",
        description="How long a console sign-in lasts (seconds or '30m', '8h'): the session "
        "ends then, or sooner on sign-out or when its key is revoked, deleted or expires.",
    )

    @model_validator(mode="after")
    def _positive_ttl(self) -> ConsoleSettings:
        # A negative duration means "forever" elsewhere; a sign-in must end.
        if not parse_duration(self.session_ttl):
            raise ValueError("console.session_ttl must be a positive duration, e.g. '8h'")
        return self

    def session_ttl_s(self) -> float:
        return parse_duration(self.session_ttl) or 0.0


class Settings(_Section):
    models_dir: Path = Field(
        Path("/var/lib/llmd/models"),
        description="Directory holding model files; relative to the config file's directory.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    loading: LoadingSettings = Field(default_factory=LoadingSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="One table per model: [models.NAME]."
    )

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        seen: dict[str, str] = {}
        for name, model in self.models.items():
            for alias in [name, *model.aliases]:
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", alias):
                    raise ValueError(f"model name {alias!r}: use letters, digits and . _ : / -")
                if alias in seen:
                    raise ValueError(f"model name {alias!r} is used by {seen[alias]!r} already")
                seen[alias] = name
        if self.server.default_model is not None and self.server.default_model not in seen:
            raise ValueError(
                f"server.default_model {self.server.default_model!r} is not a configured model"
            )
        return self

    def default_model_name(self) -> str | None:
        if self.server.default_model is not None:
            return self.server.default_model
        return next(iter(self.models), None)

    def model_path(self, name: str) -> Path:
        path = self.models[name].path
        return path if path.is_absolute() else self.models_dir / path

    def draft_path(self, ms: ModelSettings) -> Path | None:
        """The file of a model's draft (`draft`), None when it has none."""
        if ms.draft is None:
            return None
        return ms.draft if ms.draft.is_absolute() else self.models_dir / ms.draft
