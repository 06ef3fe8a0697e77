"""A conductor on a hypervisor host reports the capacity it offers to VM nodes.

The scheduler carves VM nodes for instances out of that capacity (``services/scheduler/
hypervisors.py``); each one holds its cpus, memory and disk until it is cleaned and
deleted. The capacity is what the host has (``virsh nodeinfo``, the size of the disk under
``vm_root``, or the settings' figures) times the allocation ratios, less what is kept
back for the host itself.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from libs.db import Database, Hypervisor, utcnow

from .settings import ConductorSettings

LOG = logging.getLogger(__name__)

GiB = 1024**3
COMMAND_TIMEOUT = 30.0

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Capacity:
    vcpus: int
    memory_mb: int
    disk_gb: int


class CapacityUnknown(RuntimeError):
    """The host's resources could not be read."""


def _run(runner: Runner, *command: str) -> str:
    try:
        result = runner(
            list(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CapacityUnknown(f"{command[0]} failed: {exc}") from None
    if result.returncode != 0:
        raise CapacityUnknown(f"{' '.join(command[:3])} failed: {result.stderr.strip()}")
    return str(result.stdout)


def host_resources(settings: ConductorSettings, runner: Runner = subprocess.run) -> Capacity:
    """The host's CPUs, memory (MiB) and VM disk (GiB), before ratios and reserves: the
    settings' figures where given, else read from libvirt and the disk of ``vm_root``."""
    vcpus, memory_mb = settings.vm_vcpus, settings.vm_memory_mb
    if vcpus is None or memory_mb is None:
        info = _run(runner, "virsh", "-q", "-c", settings.vm_libvirt_uri, "nodeinfo")
        cpus = re.search(r"^CPU\(s\):\s*(\d+)", info, re.MULTILINE)
        memory = re.search(r"^Memory size:\s*(\d+)\s*KiB", info, re.MULTILINE)
        if cpus is None or memory is None:
            raise CapacityUnknown(f"virsh nodeinfo printed no CPU(s)/Memory size: {info!r}")
        vcpus = int(cpus.group(1)) if vcpus is None else vcpus
        memory_mb = int(memory.group(1)) // 1024 if memory_mb is None else memory_mb
    disk_gb = settings.vm_disk_gb
    if disk_gb is None:
        settings.vm_root.mkdir(parents=True, exist_ok=True)
        disk_gb = shutil.disk_usage(settings.vm_root).total // GiB
    return Capacity(vcpus=vcpus, memory_mb=memory_mb, disk_gb=disk_gb)


def schedulable(settings: ConductorSettings, host: Capacity) -> Capacity:
    """What the scheduler may hand out of ``host``."""
    return Capacity(
        vcpus=math.floor(host.vcpus * settings.vm_cpu_allocation_ratio),
        memory_mb=max(
            0,
            math.floor(host.memory_mb * settings.vm_ram_allocation_ratio)
            - settings.vm_reserved_memory_mb,
        ),
        disk_gb=max(0, host.disk_gb - settings.vm_reserved_disk_gb),
    )


def bridge_datapath_id(bridge: str, runner: Runner = subprocess.run) -> str | None:
    """The Open vSwitch bridge's datapath id (16 hex digits), or None if unreadable."""
    try:
        out = _run(runner, "ovs-vsctl", "get", "bridge", bridge, "datapath_id")
    except CapacityUnknown as exc:
        LOG.warning("hypervisor: datapath id of bridge %s unknown (%s)", bridge, exc)
        return None
    value = out.strip().strip('"')
    return value if re.fullmatch(r"[0-9a-fA-F]{16}", value) else None


class HypervisorReport:
    """Writes this host's ``hypervisor`` row (made on the first report)."""

    def __init__(
        self, settings: ConductorSettings, db: Database, runner: Runner = subprocess.run
    ) -> None:
        self.settings = settings
        self.db = db
        self.runner = runner
        self.name = settings.hypervisor_name or settings.hostname
        self.reported = False

    def report(self) -> Hypervisor:
        """Read the capacity and write it; CapacityUnknown if it cannot be read."""
        settings = self.settings
        capacity = schedulable(settings, host_resources(settings, self.runner))
        bridge = settings.vm_bridge or ""
        switch_id = settings.vm_switch_id or bridge_datapath_id(bridge, self.runner)
        values: dict[str, Any] = {
            "conductor": settings.hostname,
            "resource_class": settings.hypervisor_resource_class,
            "vcpus": capacity.vcpus,
            "memory_mb": capacity.memory_mb,
            "disk_gb": capacity.disk_gb,
            "bridge": bridge,
            "switch_id": switch_id,
            "libvirt_uri": settings.vm_libvirt_uri,
            "updated_at": utcnow(),
        }
        with self.db.session() as session:
            row = session.exec(select(Hypervisor).where(col(Hypervisor.name) == self.name)).first()
            if row is None:
                row = Hypervisor(name=self.name, **values)
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            session.add(row)
            session.commit()
            session.refresh(row)
        if not self.reported:
            LOG.info(
                "hypervisor %s: %d vCPUs, %d MiB, %d GiB for %s VMs on bridge %s",
                self.name,
                capacity.vcpus,
                capacity.memory_mb,
                capacity.disk_gb,
                settings.hypervisor_resource_class,
                bridge,
            )
        self.reported = True
        return row
