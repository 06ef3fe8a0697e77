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
    stranded_after: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a BUILD instance may wait without a node before a scheduler "
        "schedules it again (its request was lost, e.g. a cast that never arrived)",
    )
    stranded_check_interval: float = Field(
        default=30.0, gt=0, description="Seconds between looks for such stranded instances"
    )
