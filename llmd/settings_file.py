"""Reading llmd's TOML file into the settings model (llmd/settings.py): where the file is,
and a bad file refused with its path, line, key and reason (llmd/explain.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmd.explain import explain, read_toml
from llmd.settings import Settings

DEFAULT_CONFIG_PATHS = (Path("etc/llmd.toml"), Path("/etc/llmd/llmd.toml"))


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, line, key and reason."""


def find_config(explicit: str | Path | None) -> Path | None:
    """The config file to use: an explicit path, $LLMD_CONFIG, ./etc/llmd.toml, /etc/llmd."""
    if explicit is not None:
        return Path(explicit)
    if env := os.environ.get("LLMD_CONFIG"):
        return Path(env)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def load_settings(path: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read and validate a TOML file; relative paths in it are made relative to its directory."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        text, data = read_toml(path, ConfigError)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(path, text, exc)) from exc
    base = path.parent if path is not None else Path.cwd()
    if not settings.models_dir.is_absolute():
        settings.models_dir = (base / settings.models_dir).resolve()
    if not settings.auth.keys_file.is_absolute():
        settings.auth.keys_file = (base / settings.auth.keys_file).resolve()
    server = settings.server
    if server.tls_cert is not None and server.tls_key is not None:
        # Both at once: assigning one alone would meet the both-or-neither check half done.
        settings.server = server.model_copy(
            update={
                # Not resolved: a symlink (certbot's live/NAME/fullchain.pem) is followed
                # again at each reload, and the messages name the path that was configured.
                "tls_cert": (base / server.tls_cert).absolute(),
                "tls_key": (base / server.tls_key).absolute(),
            }
        )
    settings.usage.database = _database_path(settings.usage.database, base)
    if settings.logging.dir is not None and not settings.logging.dir.is_absolute():
        settings.logging.dir = (base / settings.logging.dir).resolve()
    for model in settings.models.values():
        model.chat_template = _read_template(model.chat_template, path)
    return settings


def _database_path(given: Path | None, base: Path) -> Path:
    if given is not None:
        return given if given.is_absolute() else (base / given).resolve()
    if state := os.environ.get("STATE_DIRECTORY"):  # systemd's StateDirectory=
        return Path(state.split(":")[0]) / "usage.db"
    installed = Path("/var/lib/llmd")
    if installed.is_dir() and os.access(installed, os.W_OK):
        return installed / "usage.db"
    return (base / "usage.db").resolve()


def _read_template(value: str | None, config_path: Path | None) -> str | None:
    if value is None or "{" in value or "\n" in value:
        return value
    candidate = Path(value)
    if not candidate.is_absolute() and config_path is not None:
        candidate = config_path.parent / candidate
    try:
        return candidate.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"chat_template file {candidate}: cannot read: {exc.strerror}") from exc


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
