"""Settings of the scheduler service (``[scheduler]`` in the TOML file)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from libs.config import CommonSettings, default_hostname


class SchedulerSettings(CommonSettings):
    section: ClassVar[str] = "scheduler"

    hostname: str = Field(default_factory=default_hostname, description="This scheduler's name")
    max_attempts: int = Field(
        default=3, ge=1, description="Nodes tried for one instance before it goes to ERROR"
    )
    workers: int = Field(default=8, ge=1, description="Requests handled at once")
