"""The daemon's logging: formats, request ids on every line, the journal, and log files.

`configure(settings)` installs one handler on the root logger that hands records to a
background thread (a `QueueListener`): writing to stderr or to a file can block (a slow
journald, a full disk), and the event loop must never wait for it. That thread writes to
stderr and, when `[logging] dir` is set, to app.log (everything but access lines),
access.log (one line per request) and error.log (warnings and errors), each rotated by size.

Every line logged while a request is being handled carries that request's id, model and key
name, taken from `record.current_record` by a filter that runs in the logging thread of
the request (before the record crosses to the writer thread).

`access_log` is the request observer that writes the access lines (one per request, with its
facts as fields). Prompt and answer text is never logged here; the serving layer logs it only
when the operator turns on `server.log_prompts`.

No line carries a control character raw, whatever a client sent (a path, a header, a key
name): CR, LF, ESC, NUL, DEL, C1 controls, Unicode line separators and bidi overrides in a
message's arguments and in field values are written escaped (`\x1b`, `\r`, `\u2028`), so a
request cannot forge a log line or drive the terminal that shows the log. Only the message's
own text (its format string, a traceback) keeps its line breaks.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from llmd.record import RequestRecord, current_record
from llmd.settings import Settings

Format = Literal["text", "keyvalue", "json"]

ACCESS_LOGGER = "llmd.access"
# syslog priorities: journald reads a leading "<N>" on each stdout/stderr line as the level.
_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_CONTEXT = ("request_id", "model", "key")


# What a log line never carries raw: C0 controls, DEL, C1 controls (0x9b is a terminal's CSI
# too), line and paragraph separators, bidi embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """`text` with every control character written as an escape: one line, inert."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_lines(text: str) -> str:
    """Like `escape`, but line breaks stay (a message's own, a traceback's)."""
    return "\n".join(escape(line) for line in text.split("\n"))


def _json_line(obj: Any) -> str:
    # json.dumps escapes C0 controls; DEL, C1 and the separators it leaves as they are.
    line = json.dumps(obj, ensure_ascii=False, default=str)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class _Escaped:
    """A message argument shown escaped, for %s and %r alike (a string's repr escapes
    control characters itself: escaping it first would double its backslashes)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _safe_arg(value: Any) -> Any:
    if isinstance(value, int | float):  # bool too: %d and %.2f keep working
        return value
    return _Escaped(value)


def message(record: logging.LogRecord) -> str:
    """The record's message with its arguments escaped (they may come from a request); the
    format string is the code's own."""
    if not record.args:
        return str(record.msg)
    args = record.args
    if isinstance(args, Mapping):
        safe: Any = {k: _safe_arg(v) for k, v in args.items()}
    else:
        safe = tuple(_safe_arg(v) for v in args)
    try:
        return str(str(record.msg) % safe)
    except (TypeError, ValueError):
        # "%c" of a character that escaping made longer; a format that is wrong anyway
        # raises here as it would in logging (which reports it).
        return escape(record.getMessage())


def journal_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _JOURNAL_PRIORITY[level]
    return 7


class RequestContext(logging.Filter):
    """Stamps the current request's id, model and key name on every record logged for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_record.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current.request_id
            record.model = current.model
            record.key = current.key_name
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context (request id, model, key) then the record's own `extra={"fields": {...}}`."""
    out: dict[str, Any] = {}
    for name in _CONTEXT:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    extra = getattr(record, "fields", None)
    if isinstance(extra, Mapping):
        out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _kv_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or _UNSAFE.search(text):
        return _json_line(text)
    return text


class Formatter(logging.Formatter):
    """One line per record in the chosen format; `journal` adds syslog priority prefixes and
    drops the timestamp from text lines (journald stamps each line itself)."""

    def __init__(self, fmt: Format = "text", journal: bool = False) -> None:
        super().__init__()
        self.style_name = fmt
        self.journal = journal

    def _time(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        text = message(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        fields = _fields(record)
        level = record.levelname.lower()
        if self.style_name == "json":
            obj = {"time": self._time(record), "level": level, "logger": record.name}
            obj.update(fields)
            obj["msg"] = text
            line = _json_line(obj)
        elif self.style_name == "keyvalue":
            pairs = {"time": self._time(record), "level": level, "logger": record.name}
            pairs.update(fields)
            pairs["msg"] = text
            line = " ".join(f"{k}={_kv_value(v)}" for k, v in pairs.items())
        else:
            head = record.name if self.journal else f"{self._time(record)} {record.levelname}"
            if not self.journal:
                head += f" {record.name}"
            rid = fields.pop("request_id", None)
            parts = [head] + ([f"request_id={escape(str(rid))}"] if rid is not None else [])
            parts.append(_escape_lines(text))
            parts += [f"{k}={_kv_value(v)}" for k, v in fields.items()]
            line = " ".join(parts)
        if self.journal:
            prefix = f"<{journal_priority(record.levelno)}>"
            # journald splits on newlines: every line of a traceback gets the priority too.
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


class _OnlyAccess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == ACCESS_LOGGER


class _NoAccess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != ACCESS_LOGGER


def journal_wanted(setting: str, environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return setting == "on" or (setting == "auto" and bool(env.get("JOURNAL_STREAM")))


def file_handlers(folder: Path, fmt: Format, max_bytes: int, backups: int) -> list[logging.Handler]:
    """app.log (all but access lines), access.log, error.log (warnings and worse)."""
    folder.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = []
    for name, flt, level in (
        ("app.log", _NoAccess(), logging.NOTSET),
        ("access.log", _OnlyAccess(), logging.NOTSET),
        ("error.log", None, logging.WARNING),
    ):
        handler = logging.handlers.RotatingFileHandler(
            folder / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        handler.setFormatter(Formatter(fmt))
        handler.setLevel(level)
        if flt is not None:
            handler.addFilter(flt)
        handlers.append(handler)
    return handlers


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def access_log(record: RequestRecord) -> None:
    """A request observer: one line per request with its facts as fields (rendered in the
    configured format); no prompt or answer text (that is `log_prompts`)."""
    fields: dict[str, object] = {
        "request_id": record.request_id,
        "client": record.client or "-",
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "latency_s": _seconds(record.latency_s),
        "key": record.key_name,
    }
    if record.is_generation:
        fields.update(
            model=record.model,
            stream=record.stream,
            prompt_tokens=record.prompt_tokens,
            cached_tokens=record.cached_tokens,
            completion_tokens=record.completion_tokens,
            queue_s=_seconds(record.queue_wait_s),
            ttft_s=_seconds(record.ttft_s),
            tpot_s=_seconds(record.tpot_s),
        )
    if record.cache is not None:
        fields["cache"] = record.cache
    if record.error_code is not None:
        fields["error"] = record.error_code
    logging.getLogger(ACCESS_LOGGER).info("request", extra={"fields": fields})


class _Installed:
    listener: logging.handlers.QueueListener | None = None
    handler: logging.Handler | None = None


def configure(settings: Settings, stream: Any = None) -> None:
    """(Re)install the daemon's logging from the settings; safe to call again on reload."""
    cfg = settings.logging
    level = (cfg.level or settings.server.log_level).upper()
    out = stream if stream is not None else sys.stderr
    console = logging.StreamHandler(out)
    console.setFormatter(Formatter(cfg.format, journal=journal_wanted(cfg.journal)))
    handlers: list[logging.Handler] = [console]
    if cfg.dir is not None:
        handlers += file_handlers(cfg.dir, cfg.format, cfg.max_bytes, cfg.backup_count)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = _QueueHandler(records)
    front.addFilter(RequestContext())
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root = logging.getLogger()
    shutdown()
    root.addHandler(front)
    root.setLevel(level)
    listener.start()
    _Installed.listener, _Installed.handler = listener, front


def reconfigure(settings: Settings) -> None:
    """A reload's listener: level, format and log folder follow the new settings; a folder that
    cannot be used is reported and the previous logging stays."""
    try:
        configure(settings)
    except OSError as exc:
        logging.getLogger("llmd").error(
            "logging settings not applied (%s); the previous ones stay", exc
        )


def shutdown() -> None:
    """Flush and close what `configure` installed (at exit, and before a reconfigure)."""
    root = logging.getLogger()
    if _Installed.handler is not None:
        root.removeHandler(_Installed.handler)
    for handler in list(root.handlers):  # e.g. a basicConfig() from before configure()
        root.removeHandler(handler)
    if _Installed.listener is not None:
        _Installed.listener.stop()
        for handler in _Installed.listener.handlers:
            handler.close()
    _Installed.listener = _Installed.handler = None


atexit.register(shutdown)


class _QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stdlib version formats here and drops exc_info; the writer thread's formatters do
        # the formatting instead (each in its own format), so only resolve the message's args
        # and render the traceback (traceback objects should not cross threads).
        record = logging.makeLogRecord(record.__dict__)
        record.msg = message(record)
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record
