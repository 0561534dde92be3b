"""Logging (llmd/logs.py): the formats, the request's fields on every line, journal priorities,
and configure() applied again on a reload."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from llmd.logs import Formatter
from llmd.record import RequestRecord, current_record


def test_formatter_formats_and_journal_levels() -> None:
    record = RequestRecord("rid-1", "POST", "/v1/x", "/v1/x", "", 0.0, 0.0, model="m")
    token = current_record.set(record)
    try:
        from llmd.logs import RequestContext

        rec = logging.LogRecord("llmd.x", logging.ERROR, __file__, 1, "boom %s", ("a",), None)
        RequestContext().filter(rec)
    finally:
        current_record.reset(token)
    assert json.loads(Formatter("json").format(rec))["request_id"] == "rid-1"
    kv = Formatter("keyvalue").format(rec)
    assert "request_id=rid-1" in kv and "model=m" in kv and 'msg="boom a"' in kv
    text = Formatter("text", journal=True).format(rec)
    assert text.startswith("<3>llmd.x request_id=rid-1 boom a")
    rec.levelno, rec.levelname = logging.DEBUG, "DEBUG"
    assert Formatter("json", journal=True).format(rec).startswith("<7>{")


def test_configure_reapplies_level_format_and_files(tmp_path: Path) -> None:
    """What a reload does: configure() again replaces level, format and files."""
    from llmd import logs
    from llmd.settings import Settings

    first = Settings.model_validate(
        {"logging": {"level": "warning", "format": "keyvalue", "dir": str(tmp_path / "a")}}
    )
    second = Settings.model_validate(
        {"logging": {"level": "debug", "format": "json", "dir": str(tmp_path / "b")}}
    )
    try:
        logs.configure(first, stream=io.StringIO())
        logging.getLogger("llmd.test").info("hidden at warning")
        logging.getLogger("llmd.test").warning("shown")
        logs.configure(second, stream=io.StringIO())
        assert logging.getLogger().level == logging.DEBUG
        logging.getLogger("llmd.test").debug("debug now")
    finally:
        logs.shutdown()
    a = (tmp_path / "a" / "app.log").read_text()
    assert "hidden" not in a and "level=warning logger=llmd.test msg=shown" in a
    assert "level=warning" in (tmp_path / "a" / "error.log").read_text()
    b = [json.loads(line) for line in (tmp_path / "b" / "app.log").read_text().splitlines()]
    assert b == [
        {"time": b[0]["time"], "level": "debug", "logger": "llmd.test", "msg": "debug now"}
    ]
