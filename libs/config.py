"""Settings shared by every service, read from the environment and an optional TOML file.

Each service has its own settings class (``services/<name>/settings.py``) derived from
:class:`CommonSettings`. Values come, strongest first, from: arguments, ``TETSU_*``
environment variables, the TOML file named by ``TETSU_CONFIG``, then the defaults. The
file's top-level keys apply to every service and its ``[api]``, ``[scheduler]``,
``[conductor]`` and ``[netctl]`` tables to one::

    database_url = "postgresql+psycopg://tetsu:tetsu@db/tetsu"
    transport_url = "amqp://tetsu:secret@rabbit:5672/tetsu"

    [conductor]
    hostname = "conductor-1"
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_ENV = "TETSU_CONFIG"
SECTIONS = ("api", "scheduler", "conductor", "netctl", "cli")


class ConfigFileError(ValueError):
    """The TOML file named by TETSU_CONFIG is missing or not valid TOML."""


class _TomlFileSource(PydanticBaseSettingsSource):
    """The TOML file's top-level keys merged with the calling service's table."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self.section = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_ENV)
        if not path:
            return {}
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigFileError(f"cannot read {CONFIG_ENV}={path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{path} is not valid TOML: {exc}") from exc
        values = {k: v for k, v in data.items() if k not in SECTIONS}
        section = data.get(self.section, {})
        if isinstance(section, dict):
            values.update(section)
        return values


class CommonSettings(BaseSettings):
    """What every service needs: the database, the message bus and logging."""

    model_config = SettingsConfigDict(env_prefix="TETSU_", extra="ignore")
    section: ClassVar[str] = "common"

    database_url: str = Field(
        default="sqlite:///tetsu.db",
        description="SQLAlchemy URL: postgresql+psycopg://user:pass@host/db or sqlite:///path",
    )
    transport_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672//",
        description="Message bus: amqp://user:pass@host:5672/vhost, or memory:// in one process",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    conductor_heartbeat_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a heartbeat after which a conductor counts as dead",
    )
    nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="How far below the host's other processes this service runs for CPU "
        "(Unix niceness, 0-19). On a host the API shares with the scheduler, the conductors "
        "and netctl, running those at 10 lets the API answer first while they work through "
        "a burst (deploy/compose.yaml does). A process cannot raise its priority again.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls, cls.section))


def default_hostname() -> str:
    return socket.gethostname()
