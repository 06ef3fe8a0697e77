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
    metrics_host: str = Field(default="127.0.0.1", description="Address of the /metrics server")
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Port of the Prometheus /metrics server (0: none)"
    )
