"""schemathesis against the real daemon: requests generated from OpenAI's own description of the
routes llmd serves (tests/contracts/openai-routes.json) and from llmd's description of its admin
routes (docs/llmd-admin-openapi.json), valid ones and ones made invalid on purpose. Whatever they
hold, no answer is a 5xx, every 4xx is an error in OpenAI's shape, and every answer of the admin
routes is what llmd's description says it is (status, content type, schema).

Bounded so that it runs in every `scripts/test`: a fixed number of examples per operation and
generation mode, derandomized (the same requests every run, no example database), no shrinking
(a failure's request is reported as it was sent, with a curl command), and generation kept cheap
(max_tokens at most 2). The daemon is one of the module's own, with keys, so that the admin
routes are fuzzed as an admin and the model and key operations cannot disturb the other tests.
`LLMD_FUZZ_REPORT=FILE` writes what was sent and answered, per operation, as JSON;
`LLMD_FUZZ_SCALE=N` runs N times the examples (a longer search, not for every run).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from llmd.auth.keys import add_key
from tests.contracts.extract import ROUTES_OUT
from tests.e2e.conftest import ROOT, SMOL, Daemon, bearer, start_daemon

ADMIN_SPEC = ROOT / "docs" / "llmd-admin-openapi.json"


def _load(path: Path) -> Any:
    """The description without its security requirements: every request carries the admin
    key, so that negative generation spends itself on bodies and parameters rather than on
    Authorization headers (the auth tests own those)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.pop("security", None)
    for item in raw["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    return schemathesis.openapi.from_dict(raw)


OPENAI = _load(ROUTES_OUT)
ADMIN = _load(ADMIN_SPEC)

# Examples per operation and generation mode. The model operations that load or stop a process
# cost a second or so when they hit the real model, hence fewer.
EXAMPLES = 25
SLOW_EXAMPLES = 8
SLOW = {"load", "reload", "pin", "unload", "keep_alive"}
# OpenAI's chat request schema is large: an invalid example of it takes hypothesis ~0.5 s.
CHAT_NEGATIVE_EXAMPLES = 15
SCALE = int(os.environ.get("LLMD_FUZZ_SCALE", "1"))
"""Examples times this: a longer search than every test run's (docs/robustness.md)."""


def _param(content: bytes) -> Any:
    try:
        return json.loads(content)["error"]["param"]
    except (ValueError, KeyError, TypeError):
        return None


ACCEPTED = {200, 201, 404, 409}
"""An admin route's answers to a request its description calls valid: done, created, no such
model or key (a generated name), a key name taken."""
MAX_TOKENS = 2
"""The most tokens a generated request may ask for: cheap generation, whatever else it asks."""

FUZZ_CONFIG = f"""
[server]
default_model = "smollm2"
max_queue = 8

[engine]
ctx_per_seq = 512
parallel = 4

[auth]
failure_delay_s = 0.01
failure_delay_max_s = 0.05

[models.smollm2]
path = "{SMOL}"
aliases = ["smol"]

# What the model operations load, unload, reload and pin: the model the /v1 requests use
# stays loaded.
[models.spare]
path = "{SMOL}"
parallel = 1
ctx_per_seq = 256
"""

# Generated strings rarely name something that exists; a drawn index swaps in one that does
# (0: keep what was generated), so that requests reach the engine and the real model and key.
MODEL_NAMES = ("smollm2", "smol", "smollm2")
TARGET_MODEL = "spare"
TARGET_KEY = "fuzz-target"


def _cases(schema: Any) -> Iterator[Any]:
    """Each operation in both modes; negative only where there is something to make invalid
    (a body, a query or a header)."""
    for result in schema.get_all_operations():
        op = result.ok()
        # A path parameter alone cannot be made invalid: an empty or odd one is another path.
        has_input = any(len(c) for c in (op.body, op.query, op.headers))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.POSITIVE or has_input:
                yield pytest.param(schema, op.label, mode, id=f"{op.label}-{mode.value}")


CASES = [*_cases(OPENAI), *_cases(ADMIN)]
REPORT: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon with an admin key (whose secret it yields) and a key the key operations may
    revoke and rotate."""
    tmp = tmp_path_factory.mktemp("fuzz")
    _, secret = add_key(tmp / "keys.toml", "root", admin=True)
    add_key(tmp / "keys.toml", TARGET_KEY)
    d = start_daemon(tmp, FUZZ_CONFIG)
    yield d, secret
    assert d.stop() == 0, d.tail()
    if path := os.environ.get("LLMD_FUZZ_REPORT"):
        Path(path).write_text(json.dumps(REPORT, indent=2) + "\n", encoding="utf-8")


def steer(case: Any, pick: int, mode: GenerationMode) -> None:
    """Point a generated request at what exists (for a drawn `pick`) and keep generation cheap:
    max_tokens at most MAX_TOKENS. A value of the wrong type is left as generated."""
    body = case.body
    path = case.operation.path
    params = case.path_parameters
    if pick and params:
        name = next(iter(params))
        if path.startswith("/api/v1/models/{name}/"):  # load, unload, reload, pin, keep_alive
            params[name] = TARGET_MODEL
        elif path.startswith("/api/v1/keys/"):
            params[name] = TARGET_KEY
        else:  # a model shown: /v1/models/{model}, /api/v1/models/{name}
            params[name] = MODEL_NAMES[pick - 1]
    if not isinstance(body, dict) or path.startswith("/api/"):
        return
    if pick and isinstance(body.get("model"), str):
        body["model"] = MODEL_NAMES[pick - 1]
    if pick and mode is GenerationMode.POSITIVE:
        # OpenAI's description allows null for most fields (stream, n, logprobs, echo...),
        # which llmd refuses; the SDKs leave them out instead, and so do most steered bodies.
        for field in [k for k, v in body.items() if v is None]:
            del body[field]
    if pick and mode is GenerationMode.POSITIVE:
        # Token ids within the smallest vocabulary (SmolLM2's 49,152), so that a drawn token
        # prompt is served, not refused for its ids.
        for field in ("prompt", "input"):
            if field in body:
                body[field] = _within_vocabulary(body[field])
    if path == "/embeddings":
        return
    if path == "/responses":
        # OpenAI's description leaves `input` out (a stored prompt or a conversation may
        # stand for it, neither of which llmd has); the limit is max_output_tokens.
        if pick and mode is GenerationMode.POSITIVE and "input" not in body:
            body["input"] = "Say hello."
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool):
            body["max_output_tokens"] = max(1, min(limit, MAX_TOKENS))
        elif "max_output_tokens" not in body:
            body["max_output_tokens"] = MAX_TOKENS
        return
    capped = False
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and not isinstance(body[field], bool):
            body[field] = max(1, min(body[field], MAX_TOKENS))
            capped = True
    if not capped and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS


def _within_vocabulary(value: Any) -> Any:
    if isinstance(value, list):
        return [_within_vocabulary(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value % 49_152
    return value


def assert_error_shape(case: Any, status: int, body: bytes) -> None:
    """A 4xx is `{"error": {"message", "type", "param", "code"}}`, message and type strings."""
    where = f"{case.operation.label} -> {status}: {body[:500]!r}\n{case.as_curl_command()}"
    error = json.loads(body)
    assert isinstance(error, dict) and set(error) == {"error"}, where
    assert set(error["error"]) == {"message", "type", "param", "code"}, where
    assert isinstance(error["error"]["message"], str) and error["error"]["message"], where
    assert isinstance(error["error"]["type"], str) and error["error"]["type"], where
    assert error["error"]["type"] != "server_error", where  # a client's mistake


def schema_describes(case: Any, response: Any) -> bool:
    """Whether OpenAI's description has the answer's shape: not for a stream (its schema is
    one chunk's) nor for base64 embeddings (it says an array of numbers whatever the format)."""
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return False
    body = case.body
    return not (isinstance(body, dict) and body.get("encoding_format") == "base64")


@pytest.mark.parametrize(("schema", "label", "mode"), CASES)
def test_generated_requests_get_no_5xx_and_errors_in_shape(
    fuzzed: tuple[Daemon, str], schema: Any, label: str, mode: GenerationMode
) -> None:
    d, secret = fuzzed
    operation = schema.find_operation_by_label(label)
    base_url = d.url + ("/v1" if schema is OPENAI else "")
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    examples = SLOW_EXAMPLES if label.rsplit("/", 1)[-1] in SLOW else EXAMPLES
    if label == "POST /chat/completions" and mode is GenerationMode.NEGATIVE:
        examples = CHAT_NEGATIVE_EXAMPLES
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    @settings(
        max_examples=examples * SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 3))
    def one(case: Any, pick: int) -> None:
        steer(case, pick, mode)
        response = case.call(base_url=base_url, headers=bearer(secret), timeout=45)
        statuses[response.status_code] += 1
        status = response.status_code
        assert status < 500, (
            f"{label} -> {status}: {response.content[:2000]!r}\n{case.as_curl_command()}"
        )
        if status >= 400:
            assert_error_shape(case, status, response.content)
        if schema is ADMIN:
            case.validate_response(response, checks=checks)
            if mode is GenerationMode.POSITIVE:
                # What llmd's description calls valid is taken (or names what is not there:
                # a model or key, or a listing's cursor, an id no row has).
                cursor = status == 400 and _param(response.content) in ("after", "before")
                assert status in ACCEPTED or cursor, (
                    f"{label} -> {status}: {response.content[:500]!r}"
                )
        elif status < 300 and schema_describes(case, response):
            case.validate_response(response, checks=[response_schema_conformance])

    one()
    REPORT[f"{label} {mode.value}"] = {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(time.monotonic() - started, 2),
    }
    assert statuses and max(statuses) < 500, statuses
    if schema is OPENAI and mode is GenerationMode.POSITIVE and "{response_id}" not in label:
        # Past validation: some of OpenAI's valid bodies are served by the real model. (A
        # generated response id names no stored response: tests/e2e/test_responses_store.py
        # reads, lists and deletes real ones.)
        assert statuses[200], statuses


def test_the_daemon_logged_no_error_and_kept_its_model_process(
    fuzzed: tuple[Daemon, str],
) -> None:
    """After everything above (run first: the tests of a module run in order), the model the
    /v1 requests used never restarted and nothing was logged as an ERROR."""
    d, secret = fuzzed
    health = httpx.get(d.url + "/api/v1/health", headers=bearer(secret), timeout=10).json()
    models = {m["name"]: m for m in health["models"]}
    assert models["smollm2"]["state"] == "ready", models["smollm2"]
    assert models["smollm2"]["restarts"] == models[TARGET_MODEL]["restarts"] == 0, models
    log = d.logs()
    assert " ERROR " not in log and "Traceback" not in log, log[-5000:]
