"""A cached answer as bytes: the engine's events of a request, in order, as compact JSON.

Replaying the events through the serving layer (instead of storing each API's response body)
gives every API its own shape from one entry, streamed or not: the pieces a stream carried,
tool calls read out of the text again, usage as the model counted it. JSON rather than pickle:
an entry read back from a shared Redis must not be able to run code in the daemon.
"""

from __future__ import annotations

import base64
from typing import Any

from llmd.cache.keys import decode, encode
from llmd.engine import messages as m

Events = list[Any]
"""One engine request's events: `Started`, `Admitted`, then `Delta`s."""


def _logprobs(lps: list[m.TokenLogprob] | None) -> Any:
    if lps is None:
        return None
    return [
        [t.token, t.logprob, t.bytes, [[o.token, o.logprob, o.bytes] for o in t.top]] for t in lps
    ]


def _read_logprobs(data: Any) -> list[m.TokenLogprob] | None:
    if data is None:
        return None
    return [
        m.TokenLogprob(t, lp, b, [m.TopLogprob(ot, olp, ob) for ot, olp, ob in top])
        for t, lp, b, top in data
    ]


def _event(event: Any) -> list[Any]:
    if isinstance(event, m.Started):
        return ["s", event.prompt_tokens, event.max_tokens, event.prompt_text]
    if isinstance(event, m.Admitted):
        return ["a", event.cached_tokens]
    if isinstance(event, m.Delta):
        return [
            "d",
            event.index,
            event.text,
            event.tokens,
            event.finish_reason,
            event.stop_sequence,
            _logprobs(event.logprobs),
        ]
    raise TypeError(f"not a cached event: {type(event).__name__}")


def _read_event(id_: str, data: list[Any]) -> Any:
    kind = data[0]
    if kind == "s":
        return m.Started(id_, data[1], data[2], data[3])
    if kind == "a":
        return m.Admitted(id_, data[1])
    if kind == "d":
        return m.Delta(id_, data[1], data[2], data[3], _read_logprobs(data[6]), data[4], data[5])
    raise ValueError(f"unknown cached event {kind!r}")


def encode_runs(runs: list[Events]) -> bytes:
    """Every engine request's events of one API request."""
    return encode({"runs": [[_event(e) for e in events] for events in runs]})


def decode_runs(data: bytes, ids: list[str]) -> list[Events]:
    """The events back, given the ids of the requests they now answer."""
    runs = decode(data)["runs"]
    if len(runs) != len(ids):
        raise ValueError("cached entry holds another number of requests")
    return [[_read_event(id_, e) for e in events] for id_, events in zip(ids, runs, strict=True)]


def encode_embedding(tokens: int, vector: bytes) -> bytes:
    return encode({"tokens": tokens, "vector": base64.b64encode(vector).decode()})


def decode_embedding(data: bytes) -> tuple[int, bytes]:
    value = decode(data)
    return int(value["tokens"]), base64.b64decode(value["vector"])
