"""Settings of a conductor (``[conductor]`` in the TOML file)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from libs.config import CommonSettings, default_hostname


class ConductorSettings(CommonSettings):
    section: ClassVar[str] = "conductor"

    hostname: str = Field(
        default_factory=default_hostname,
        description="This conductor's name on the hash ring; unique per conductor",
    )
    workers: int = Field(default=16, ge=1, description="RPC requests and node tasks at once")
    heartbeat_interval: float = Field(default=10.0, gt=0, description="Seconds between beats")
    power_sync_interval: float = Field(
        default=60.0, gt=0, description="Seconds between power-state syncs of owned nodes"
    )
    callback_timeout: float = Field(
        default=1800.0,
        gt=0,
        description="Seconds to wait for the deploy ramdisk's callback before failing",
    )
    check_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between checks for timed-out callbacks and stranded work",
    )
    redrive_after: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Seconds a claimed node or a deleted instance waits for its deploy or tear-down "
            "to start before the node's conductor starts it (a lost message)"
        ),
    )
    enabled_power_interfaces: list[str] = Field(
        default=["fake"], description="Power interfaces nodes may use (JSON list in the env)"
    )
    enabled_boot_interfaces: list[str] = Field(
        default=["fake"], description="Boot interfaces nodes may use (JSON list in the env)"
    )
    enabled_deploy_interfaces: list[str] = Field(
        default=["fake"], description="Deploy interfaces nodes may use (JSON list in the env)"
    )
    enabled_management_interfaces: list[str] = Field(
        default=["fake"], description="Management interfaces nodes may use (JSON list in the env)"
    )
