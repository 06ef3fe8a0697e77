"""Settings of the network controller (``[netctl]`` in the TOML file)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from libs.config import CommonSettings, default_hostname

from .openflow.flows import parse_switch_port


class NetctlSettings(CommonSettings):
    section: ClassVar[str] = "netctl"

    hostname: str = Field(
        default_factory=default_hostname, description="This network controller's name"
    )
    backend: str = Field(
        default="fake",
        description="Switch backend: fake (in memory) or openflow (switches connect to netctl)",
    )
    provisioning_segmentation_id: int = Field(
        default=4000,
        ge=1,
        le=4094,
        description="Segment of the provisioning network (DHCP/TFTP/HTTP of the conductors)",
    )
    workers: int = Field(default=8, ge=1, description="Requests handled at once")
    openflow_listen_host: str = Field(
        default="127.0.0.1",
        description="Address the OpenFlow controller listens on for switches (openflow backend)",
    )
    openflow_listen_port: int = Field(
        default=6653,
        ge=0,
        le=65535,
        description="TCP port of the OpenFlow controller (0: any free port)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of the /metrics server")
    metrics_port: int = Field(
        default=9103, ge=0, le=65535, description="Port of the Prometheus /metrics server (0: none)"
    )
    provisioning_ports: list[str] = Field(
        default_factory=list,
        description=(
            "Switch ports always in the provisioning network (the boot server's), as "
            '<datapath id>:<port name>, e.g. ["0000aabbccddeeff:boot0"] (JSON list in the env)'
        ),
    )

    @field_validator("provisioning_ports")
    @classmethod
    def _switch_ports(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_switch_port(text)  # a ValueError names the bad entry
        return value
