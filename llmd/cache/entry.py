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


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value`, if it has the type an entry written by llmd gives it: an entry read back from
    a shared Redis is checked, so that one someone else wrote is a miss, never a 500."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"cached value {value!r:.40} is not {kind}")
    return value


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else _typed(value, kind)


def _byte_list(value: Any) -> list[int]:
    return [_typed(b, int) for b in _typed(value, list)]


def _read_logprobs(data: Any) -> list[m.TokenLogprob] | None:
    if data is None:
        return None
    return [
        m.TokenLogprob(
            _typed(t, str),
            float(_typed(lp, (int, float))),
            _byte_list(b),
            [
                m.TopLogprob(_typed(ot, str), float(_typed(olp, (int, float))), _byte_list(ob))
                for ot, olp, ob in _typed(top, list)
            ],
        )
        for t, lp, b, top in _typed(data, list)
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


def _read_event(id_: str, data: Any) -> Any:
    kind = _typed(data, list)[0]
    if kind == "s":
        _, prompt_tokens, max_tokens, prompt_text = data
        return m.Started(
            id_, _typed(prompt_tokens, int), _typed(max_tokens, int), _opt(prompt_text, str)
        )
    if kind == "a":
        _, cached = data
        return m.Admitted(id_, _typed(cached, int))
    if kind == "d":
        _, index, text, tokens, finish, stop, logprobs = data
        return m.Delta(
            id_,
            _typed(index, int),
            _typed(text, str),
            _typed(tokens, int),
            _read_logprobs(logprobs),
            _opt(finish, str),
            _opt(stop, str),
        )
    raise ValueError(f"unknown cached event {kind!r:.20}")


def encode_runs(runs: list[Events]) -> bytes:
    """Every engine request's events of one API request."""
    return encode({"runs": [[_event(e) for e in events] for events in runs]})


def decode_runs(data: bytes, ids: list[str], ns: list[int]) -> list[Events]:
    """The events back, given the ids of the requests they now answer and their `n`; an
    entry that would not end each choice exactly once is refused (ValueError)."""
    runs = _typed(_typed(decode(data), dict)["runs"], list)
    if len(runs) != len(ids):
        raise ValueError("cached entry holds another number of requests")
    out = []
    for id_, n, stored in zip(ids, ns, runs, strict=True):
        events = [_read_event(id_, e) for e in _typed(stored, list)]
        if not events or not isinstance(events[0], m.Started):
            raise ValueError("cached run does not start with its prompt")
        ended = [e.index for e in events if isinstance(e, m.Delta) and e.finish_reason]
        indices = {e.index for e in events if isinstance(e, m.Delta)}
        if sorted(ended) != list(range(n)) or not indices <= set(range(n)):
            raise ValueError("cached run does not end each of its choices once")
        out.append(events)
    return out


def encode_embedding(tokens: int, vector: bytes) -> bytes:
    return encode({"tokens": tokens, "vector": base64.b64encode(vector).decode()})


def decode_embedding(data: bytes) -> tuple[int, bytes]:
    value = _typed(decode(data), dict)
    vector = base64.b64decode(_typed(value["vector"], str), validate=True)
    if len(vector) % 4:
        raise ValueError("cached vector is not float32s")
    return _typed(value["tokens"], int), vector
