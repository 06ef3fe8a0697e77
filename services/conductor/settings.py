"""Settings of a conductor (``[conductor]`` in the TOML file)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

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
    statistics_interval: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Seconds between looks at whether PostgreSQL's planner statistics of the node, "
            "port and instance tables are stale (after a bulk enrolment, during a burst); "
            "stale ones are analyzed"
        ),
    )
    redrive_after: float = Field(
        default=120.0,
        gt=0,
        description=(
            "Seconds a claimed node or a deleted instance waits for its deploy or tear-down "
            "to start before the node's conductor starts it (a lost message)"
        ),
    )
    event_retention_hours: float = Field(
        default=72.0,
        gt=0,
        description="Hours events are kept before the periodic sweep deletes them",
    )
    event_sweep_interval: float = Field(
        default=600.0, gt=0, description="Seconds between sweeps of events past their retention"
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of the /metrics server")
    metrics_port: int = Field(
        default=9102,
        ge=0,
        le=65535,
        description="Port of this conductor's Prometheus /metrics server (0: none)",
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

    # IPMI (power and management interface "ipmi").
    ipmi_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds one attempt at an IPMI operation may take (log in, commands, log out)",
    )
    ipmi_retries: int = Field(
        default=3, ge=1, description="Attempts at an IPMI operation that failed transiently"
    )

    # Network boot (boot interface "pxe") and the deploy ramdisk (deploy interface "ramdisk").
    boot_root: Path = Field(
        default=Path("tetsu-boot"),
        description="Folder of the boot server's files (iPXE scripts, ramdisk jobs, images)",
    )
    boot_server_host: str | None = Field(
        default=None,
        description="Boot server HTTP bind address (default: the host of boot_server_url)",
    )
    boot_server_port: int = Field(default=8080, ge=0, le=65535, description="Boot server HTTP port")
    boot_server_url: str | None = Field(
        default=None,
        description=(
            "The boot server's URL as nodes see it, with an IP address (the ramdisk has no "
            "DNS), e.g. http://10.77.0.254:8080; required for pxe"
        ),
    )
    tftp_host: str | None = Field(
        default=None, description="TFTP bind address (default: the host of boot_server_url)"
    )
    tftp_port: int = Field(
        default=69, ge=0, le=65535, description="TFTP port for the first chain step; 0: no TFTP"
    )
    dhcp_hostsdir: Path | None = Field(
        default=None,
        description=(
            "dnsmasq --dhcp-hostsdir folder for per-node host files (default: boot_root/dhcp-hosts)"
        ),
    )
    callback_url: str | None = Field(
        default=None,
        description=(
            "The API's URL as nodes see it, with an IP address, for the ramdisk's callback, "
            "e.g. http://10.77.0.254:8000; required for the ramdisk deploy"
        ),
    )
    ramdisk_kernel: Path = Field(
        default=Path("deploy/ramdisk/build/vmlinuz"), description="The deploy ramdisk's kernel"
    )
    ramdisk_initramfs: Path = Field(
        default=Path("deploy/ramdisk/build/initramfs"),
        description="The deploy ramdisk's initramfs",
    )
    ramdisk_kernel_params: str = Field(
        default="console=ttyS0,115200 quiet panic=-1",
        description="Kernel command line of the deploy ramdisk (tetsu_job= is added)",
    )
    clean_wipe: Literal["quick", "full"] = Field(
        default="quick",
        description=("Disk wipe at cleaning: quick (partition tables, first and last MiB) or full"),
    )
    evacuate_after: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Seconds an active node's power state may stay unreadable before its instance is "
            "evacuated to another node (the node fenced); 0: never automatically"
        ),
    )
    vm_root: Path = Field(
        default=Path("/var/lib/tetsu/vms"),
        description="Folder of the disks and console logs of VM nodes (power interface libvirt)",
    )
    vm_domain_type: Literal["kvm", "qemu"] = Field(
        default="kvm",
        description="libvirt domain type of VM nodes: kvm, or qemu (software emulation, no KVM)",
    )
    hypervisor: bool = Field(
        default=False,
        description=(
            "This host runs VM nodes made on demand: the conductor reports the host's "
            "capacity and the scheduler carves VM nodes out of it (enables the libvirt, "
            "virtual and image interfaces; needs vm_bridge)"
        ),
    )
    hypervisor_name: str | None = Field(
        default=None, description="The hypervisor's name in the API (default: the hostname)"
    )
    hypervisor_resource_class: str = Field(
        default="vm", description="Resource class of the VM nodes made on this hypervisor"
    )
    vm_bridge: str | None = Field(
        default=None, description="Open vSwitch bridge the on-demand VMs' NICs join"
    )
    vm_switch_id: str | None = Field(
        default=None,
        description="Datapath id of vm_bridge (default: read with ovs-vsctl at start)",
    )
    vm_libvirt_uri: str = Field(
        default="qemu:///system", description="libvirt URI of the on-demand VMs"
    )
    vm_vcpus: int | None = Field(
        default=None, ge=0, description="Host CPUs offered to VMs (default: virsh nodeinfo)"
    )
    vm_memory_mb: int | None = Field(
        default=None, ge=0, description="Host memory offered to VMs (default: virsh nodeinfo)"
    )
    vm_disk_gb: int | None = Field(
        default=None, ge=0, description="Disk offered to VMs (default: the size of vm_root's disk)"
    )
    vm_cpu_allocation_ratio: float = Field(
        default=4.0, gt=0, description="Virtual CPUs scheduled per host CPU"
    )
    vm_ram_allocation_ratio: float = Field(
        default=1.0, gt=0, description="VM memory scheduled per MiB of host memory"
    )
    vm_reserved_memory_mb: int = Field(
        default=512, ge=0, description="Host memory kept back from VMs (for the host itself)"
    )
    vm_reserved_disk_gb: int = Field(
        default=0, ge=0, description="Disk under vm_root kept back from VMs"
    )
    vm_csum_offload: bool = Field(
        default=True,
        description=(
            "VM NICs leave checksums to the host (false on Open vSwitch's userspace datapath, "
            "where nothing fills them in and TCP fails)"
        ),
    )

    @model_validator(mode="after")
    def _hypervisor_interfaces(self) -> ConductorSettings:
        """A hypervisor manages its VM nodes with libvirt, virtual and image."""
        if self.hypervisor:
            if not self.vm_bridge:
                raise ValueError("hypervisor = true needs vm_bridge (the VMs' bridge)")
            for interfaces, name in (
                (self.enabled_power_interfaces, "libvirt"),
                (self.enabled_management_interfaces, "libvirt"),
                (self.enabled_boot_interfaces, "virtual"),
                (self.enabled_deploy_interfaces, "image"),
            ):
                if name not in interfaces:
                    interfaces.append(name)
        return self
