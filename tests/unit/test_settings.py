"""Settings (llmd/settings.py): the example config, overrides, explanations of bad files, sizes
and durations, every setting described."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from llmd.cli.config import settings_reference
from llmd.settings import Settings, parse_duration, parse_size
from llmd.settings_file import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads_with_paths_relative_to_it() -> None:
    s = load_settings(ROOT / "etc/llmd.toml")
    assert s.models_dir == (ROOT / "models").resolve()
    assert s.model_path("smollm2") == s.models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert s.default_model_name() == "smollm2"
    assert s.server.host == "127.0.0.1"


def test_overrides_win_over_the_file() -> None:
    s = load_settings(ROOT / "etc/llmd.toml", {"server.port": 9999, "engine.parallel": 3})
    assert s.server.port == 9999 and s.engine.parallel == 3


def test_duplicate_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[models.a]\npath = "a.gguf"\n[models.b]\npath = "b.gguf"\naliases = ["a"]\n')
    with pytest.raises(ConfigError, match="'a' is used by 'a' already"):
        load_settings(path)


def test_unknown_model_key_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[models.a]\npath = "a.gguf"\n\n[models.a.sampling]\ntemprature = 1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"{path}:5: models.a.sampling.temprature: unknown setting" in str(err.value)


def test_every_setting_is_documented() -> None:
    reference = settings_reference()
    sections = [k for k, f in Settings.model_fields.items() if k not in ("models", "models_dir")]
    assert "cache" in sections
    for section in sections:
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type)
        for key, field in model.model_fields.items():  # type: ignore[attr-defined]
            inner = field.annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):  # engine.speculative
                for sub, subfield in inner.model_fields.items():
                    assert f"{section}.{key}.{sub} " in reference
                    assert subfield.description, f"{section}.{key}.{sub} has no description"
                continue
            assert f"{section}.{key} " in reference
            assert field.description, f"{section}.{key} has no description"


def test_sizes_and_durations() -> None:
    assert parse_size("8GiB", 0) == 8 * 2**30
    assert parse_size("800MB", 0) == 800_000_000
    assert parse_size(1234, 0) == 1234
    assert parse_size("50%", 1000) == 500
    for bad in ("lots", "0%", "150%", "12 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad, 1000)
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(0) == 0
    assert parse_duration("-1") is None
    assert parse_duration(-1) is None
    for bad_duration in ("soon", "5 minutes", True):
        with pytest.raises(ValueError):
            parse_duration(bad_duration)  # type: ignore[arg-type]


def test_bad_memory_settings_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "llmd.toml"
    path.write_text('[memory]\nbudget = "lots"\n\n[loading]\nkeep_alive = "soon"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert f"{path}:2: memory.budget" in message and "8GiB" in message
    assert f"{path}:5: loading.keep_alive" in message
    path.write_text('[models.x]\npath = "x.gguf"\nkeep_alive = "5 minutes"\n')
    with pytest.raises(ConfigError, match=r":3: models\.x\.keep_alive"):
        load_settings(path)
