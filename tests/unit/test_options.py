"""Settings: the example config, overrides, explanations of bad files, automatic threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmd.cli.config import settings_reference
from llmd.models import auto_threads
from llmd.settings import ConfigError, Settings, load_settings

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
    for section in ("server", "engine"):
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type)
        for key, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert f"{section}.{key} " in reference
            assert field.description, f"{section}.{key} has no description"


@pytest.mark.parametrize(("cores", "expected"), [(1, (1, 1)), (2, (1, 2)), (8, (7, 8))])
def test_auto_threads_leave_a_core_for_http(cores: int, expected: tuple[int, int]) -> None:
    assert auto_threads(cores) == expected
