"""The settings provider: a reload applies a usable file and tells its followers, in order; a
file that cannot be used is refused and the running settings stay, the very same object."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from llmd.settings import Settings
from llmd.settings_file import ConfigError
from llmd.settings_provider import SettingsProvider


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llmd.toml"
    path.write_text(text)
    return path


def _followed(tmp_path: Path, text: str = "") -> tuple[Path, SettingsProvider, list[Settings]]:
    """A provider of `text` as a config file, and the list of what its follower is told."""
    path = _config(tmp_path, text)
    provider = SettingsProvider.from_file(path)
    told: list[Settings] = []
    provider.subscribe(told.append)
    return path, provider, told


def test_settings_without_a_file_cannot_be_reloaded() -> None:
    provider = SettingsProvider.from_file(None)
    before = provider.current
    assert provider.path is None and not provider.reloadable
    assert asyncio.run(provider.reload()) is False
    assert provider.current is before


def test_a_usable_file_is_applied_then_becomes_current_then_followers_are_told(
    tmp_path: Path,
) -> None:
    path = _config(tmp_path, "[server]\nmax_queue = 1\n")
    provider = SettingsProvider.from_file(path)
    old = provider.current
    events: list[tuple[str, int]] = []

    async def apply(new: Settings) -> None:
        assert provider.current is old  # nothing sees the new settings before they are applied
        events.append(("apply", new.server.max_queue))

    provider.subscribe(lambda new: events.append(("first", new.server.max_queue)))
    provider.subscribe(lambda new: events.append(("second", provider.current.server.max_queue)))
    path.write_text("[server]\nmax_queue = 2\n")
    assert asyncio.run(provider.reload(apply=apply)) is True
    assert provider.current.server.max_queue == 2
    assert old.server.max_queue == 1  # the old object is replaced, never patched
    assert events == [("apply", 2), ("first", 2), ("second", 2)]


def test_overrides_stay_on_top_after_a_reload(tmp_path: Path) -> None:
    path = _config(tmp_path, "[server]\nport = 8001\nmax_queue = 1\n")
    provider = SettingsProvider.from_file(path, {"server.port": 9000})
    path.write_text("[server]\nport = 8002\nmax_queue = 5\n")
    assert asyncio.run(provider.reload()) is True
    assert (provider.current.server.port, provider.current.server.max_queue) == (9000, 5)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nbogus = 1\n", ":2: server.bogus: unknown setting"),
        ("[server\n", ": not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_and_the_running_settings_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    path, provider, told = _followed(tmp_path, "[server]\nmax_queue = 1\n")
    before = provider.current

    async def apply(new: Settings) -> None:
        raise AssertionError("a refused file is never applied")

    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="llmd"):
        assert asyncio.run(provider.reload(apply=apply)) is False
    assert provider.current is before and told == []
    assert f"reload refused, the previous configuration stays: {path}{problem}" in caplog.text


def test_a_problem_the_check_names_refuses_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, provider, told = _followed(tmp_path)
    before = provider.current
    with caplog.at_level(logging.ERROR, logger="llmd"):
        assert asyncio.run(provider.reload(check=lambda s: "models directory is gone")) is False
    assert provider.current is before and told == []
    assert "reload refused, the previous configuration stays: models directory is gone" in (
        caplog.text
    )


def test_a_failed_apply_propagates_and_keeps_the_running_settings(tmp_path: Path) -> None:
    _, provider, told = _followed(tmp_path)
    before = provider.current

    async def apply(new: Settings) -> None:
        raise RuntimeError("the manager could not apply them")

    with pytest.raises(RuntimeError, match="could not apply"):
        asyncio.run(provider.reload(apply=apply))
    assert provider.current is before and told == []


def test_apply_refusing_with_a_config_error_is_a_refused_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's apply loads the TLS pair first and refuses the reload when it cannot."""
    _, provider, told = _followed(tmp_path)
    before = provider.current

    async def apply(new: Settings) -> None:
        raise ConfigError("llmd.toml:3: server.tls_key: not the private key of cert.pem")

    with caplog.at_level(logging.ERROR, logger="llmd"):
        assert asyncio.run(provider.reload(apply=apply)) is False
    assert provider.current is before and told == []
    assert (
        "reload refused, the previous configuration stays: llmd.toml:3: server.tls_key: "
        "not the private key"
    ) in caplog.text


def test_a_failing_follower_does_not_keep_the_others_on_old_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(tmp_path, "")
    provider = SettingsProvider.from_file(path)
    told: list[Settings] = []

    def broken(new: Settings) -> None:
        raise ValueError("a bug in a follower")

    provider.subscribe(broken)  # before the one that records
    provider.subscribe(told.append)
    with caplog.at_level(logging.ERROR, logger="llmd"):
        assert asyncio.run(provider.reload()) is True
    assert told == [provider.current]
    assert "settings listener" in caplog.text and "a bug in a follower" in caplog.text


def test_the_app_follows_a_reload(tmp_path: Path) -> None:
    """Serving, metrics and auth read the reloaded values (once held by patching in place)."""
    from llmd.auth.middleware import AUTH
    from llmd.models import ModelManager
    from llmd.server.app import METRICS, SERVING, SETTINGS, create_app

    models = tmp_path / "models"
    models.mkdir()
    head = f'models_dir = "{models}"\n[usage]\nenabled = false\n'
    path = _config(tmp_path, head)
    provider = SettingsProvider.from_file(path)
    app = create_app(provider, ModelManager(provider.current))
    path.write_text(
        head + "[server]\nlog_prompts = true\n[metrics]\nmax_key_labels = 7\n"
        "[auth]\nrequire_auth = true\n"
    )
    assert asyncio.run(provider.reload()) is True
    assert app[SETTINGS] is provider
    assert app[SERVING].settings.server.log_prompts is True
    assert app[METRICS].settings.metrics.max_key_labels == 7
    assert app[AUTH].settings.auth.require_auth is True
