"""Settings: arguments beat TETSU_* variables, which beat the TOML file, which beats the
defaults; the file's tables apply to one service each."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.config import CommonSettings, ConfigFileError
from services.api.settings import APISettings
from services.conductor.settings import ConductorSettings
from services.netctl.settings import NetctlSettings
from services.scheduler.settings import SchedulerSettings

CONFIG = """
database_url = "postgresql+psycopg://tetsu:pw@db/tetsu"
transport_url = "amqp://tetsu:pw@rabbit:5672/tetsu"

[conductor]
hostname = "conductor-7"
callback_timeout = 600

[scheduler]
max_attempts = 5
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("TETSU_DATABASE_URL", "TETSU_TRANSPORT_URL", "TETSU_HOSTNAME", "TETSU_PORT"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "tetsu.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("TETSU_CONFIG", str(path))
    return path


def test_top_level_keys_apply_to_every_service_and_tables_to_one(config_file: Path) -> None:
    conductor = ConductorSettings()
    scheduler = SchedulerSettings()
    assert (
        conductor.database_url == scheduler.database_url == "postgresql+psycopg://tetsu:pw@db/tetsu"
    )
    assert conductor.hostname == "conductor-7"
    assert conductor.callback_timeout == 600
    assert scheduler.max_attempts == 5
    assert scheduler.hostname != "conductor-7"  # another service's table is not read


def test_environment_beats_the_file_and_arguments_beat_both(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETSU_HOSTNAME", "from-env")
    monkeypatch.setenv("TETSU_PORT", "9999")
    assert ConductorSettings().hostname == "from-env"
    assert ConductorSettings(hostname="from-arg").hostname == "from-arg"
    assert APISettings().port == 9999


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETSU_CONFIG", raising=False)
    monkeypatch.delenv("TETSU_DATABASE_URL", raising=False)
    assert APISettings().database_url == "sqlite:///tetsu.db"
    assert APISettings().admin_token is None


def test_a_missing_or_broken_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETSU_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigFileError, match="cannot read"):
        ConductorSettings()
    broken = tmp_path / "broken.toml"
    broken.write_text("hostname = ")
    monkeypatch.setenv("TETSU_CONFIG", str(broken))
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        ConductorSettings()


def test_bad_values_name_the_setting(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETSU_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="max_attempts"):
        SchedulerSettings()


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "operations.md").read_text()
    for cls in (CommonSettings, APISettings, SchedulerSettings, ConductorSettings, NetctlSettings):
        for name in cls.model_fields:
            assert f"`TETSU_{name.upper()}`" in doc, (
                f"{cls.__name__}.{name} is not in docs/operations.md"
            )
