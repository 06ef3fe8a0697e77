"""Settings of the network controller (``[netctl]`` in the TOML file)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from libs.config import CommonSettings, default_hostname


class NetctlSettings(CommonSettings):
    section: ClassVar[str] = "netctl"

    hostname: str = Field(
        default_factory=default_hostname, description="This network controller's name"
    )
    backend: str = Field(default="fake", description="Switch backend: fake (openflow later)")
    provisioning_segmentation_id: int = Field(
        default=4000,
        ge=1,
        le=4094,
        description="Segment of the provisioning network (DHCP/TFTP/HTTP of the conductors)",
    )
    workers: int = Field(default=8, ge=1, description="Requests handled at once")
