"""A conductor on a hypervisor host: it reports the room it offers VMs, manages the VM
nodes made there whatever the hash ring says (they are pinned to it), and deletes each one
once its instance is gone and it is cleaned, which gives the room back."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlmodel import col, select

from libs.db import Hypervisor, InstanceStatus, Node, PortBinding
from libs.db.models import Event
from libs.notify import Notifier
from services.conductor import hypervisor as hv_module
from services.conductor.hashring import HashRing
from services.conductor.hypervisor import (
    Capacity,
    CapacityUnknown,
    host_resources,
    schedulable,
)
from services.conductor.settings import ConductorSettings
from services.scheduler import hypervisors
from services.scheduler.claims import ClaimOutcome
from services.scheduler.request import RequestSpec
from tests.unit.conductor.conftest import HOST, Cloud, _owned_id, wait_for
from tests.unit.conductor.test_libvirt_driver import virsh, vm_settings  # noqa: F401
from tests.unit.conductor.test_pxe_ramdisk_drivers import make_image

NODEINFO = """CPU model:           x86_64
CPU(s):              8
CPU frequency:       2400 MHz
Memory size:         16777216 KiB
"""


def runner(stdout: str, returncode: int = 0) -> Any:
    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, returncode, stdout, "virsh: no connection")

    return run


def hv_settings(tmp_path: Path, **overrides: Any) -> ConductorSettings:
    values: dict[str, Any] = {
        "hostname": HOST,
        "hypervisor": True,
        "vm_bridge": "br-vm",
        "vm_root": tmp_path / "vms",
        **overrides,
    }
    return ConductorSettings(**values)


def test_the_room_is_the_host_times_the_ratios_less_the_reserve(tmp_path: Path) -> None:
    settings = hv_settings(tmp_path, vm_disk_gb=100, vm_reserved_disk_gb=10)
    host = host_resources(settings, runner(NODEINFO))
    assert host == Capacity(vcpus=8, memory_mb=16384, disk_gb=100)
    # 4 vCPUs per CPU, memory 1:1 less 512 MiB for the host, disk less its reserve.
    assert schedulable(settings, host) == Capacity(vcpus=32, memory_mb=15872, disk_gb=90)
    figures = hv_settings(tmp_path, vm_vcpus=2, vm_memory_mb=1024, vm_disk_gb=5)
    assert host_resources(figures, runner("", returncode=1)) == Capacity(2, 1024, 5)


def test_an_unreadable_host_is_a_clear_error(tmp_path: Path) -> None:
    settings = hv_settings(tmp_path, vm_disk_gb=1)
    with pytest.raises(CapacityUnknown, match="virsh -q -c failed: virsh: no connection"):
        host_resources(settings, runner("", returncode=1))
    with pytest.raises(CapacityUnknown, match="no CPU"):
        host_resources(settings, runner("nothing useful\n"))


def test_hypervisor_mode_needs_a_bridge_and_enables_the_vm_interfaces(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs vm_bridge"):
        ConductorSettings(hostname=HOST, hypervisor=True)
    settings = hv_settings(tmp_path)
    assert "libvirt" in settings.enabled_power_interfaces
    assert "libvirt" in settings.enabled_management_interfaces
    assert "virtual" in settings.enabled_boot_interfaces
    assert "image" in settings.enabled_deploy_interfaces


def test_a_pinned_node_belongs_to_its_conductor_whatever_the_ring_says() -> None:
    ring = HashRing(["c1", "c2"], pins={"vm-node": "c3"})
    assert ring.owner("vm-node") == "c3"
    assert ring.owner("other") in {"c1", "c2"}


def test_a_vm_made_on_the_hypervisor_runs_there_and_is_deleted_after_its_instance(
    cloud: Cloud,
    virsh: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another live conductor, which the ring gives the VM node's id: only the pin sends
    # the node's work to the hypervisor's own conductor.
    cloud.add_conductor("c2")
    node_id = _owned_id("c2", (HOST, "c2"))
    monkeypatch.setattr(hypervisors, "new_id", lambda: node_id)
    monkeypatch.setattr(hv_module, "bridge_datapath_id", lambda bridge, runner=None: None)
    settings = vm_settings(tmp_path) | {
        "hypervisor": True,
        "vm_bridge": "br-vm",
        "vm_vcpus": 1,
        "vm_memory_mb": 1536,
        "vm_disk_gb": 3,
    }
    cloud.start_conductor(**settings)
    with cloud.db.session() as session:
        row = session.exec(select(Hypervisor)).one()
    assert (row.name, row.conductor, row.resource_class) == (HOST, HOST, "vm")
    assert (row.vcpus, row.memory_mb, row.disk_gb, row.bridge) == (4, 1024, 3, "br-vm")

    data = b"raw image" * 1000
    uploaded = tmp_path / "upload"
    uploaded.write_bytes(data)
    cloud.image_id = make_image(cloud, data, file_path=str(uploaded)).id
    instance_id = cloud.make_instance()
    spec = RequestSpec(
        instance_id=instance_id,
        flavor_name="vm.small",
        resource_class="vm",
        cpus=2,
        memory_mb=512,
        disk_gb=1,
        port_count=1,
    )
    outcome, made = hypervisors.claim_on_hypervisor(
        cloud.db, spec, row.id, Notifier(service="test")
    )
    assert (outcome, made) == (ClaimOutcome.CLAIMED, node_id)
    assert cloud.api.owner_of(node_id) == HOST

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    assert (virsh / f"tetsu-{node_id}").read_text().strip() == "running"
    [port] = cloud.ports(node_id)
    assert port.binding == PortBinding.TENANT
    xml = (virsh / f"tetsu-{node_id}.xml").read_text()
    assert f'<target dev="{port.switch_port}"/>' in xml

    cloud.delete_instance(instance_id)

    def gone() -> bool:
        with cloud.db.session() as session:
            return session.get(Node, node_id) is None

    wait_for(gone, timeout=10, what="the VM node deleted")
    assert cloud.ports(node_id) == []
    assert cloud.instance(instance_id).status == InstanceStatus.DELETED
    assert not (tmp_path / "vms" / f"{node_id}.img").exists()
    assert not (virsh / f"tetsu-{node_id}").exists(), "the domain is undefined"
    with cloud.db.session() as session:
        events = session.exec(
            select(Event.event_type)
            .where(col(Event.object_id) == node_id)
            .order_by(col(Event.created_at))
        ).all()
    assert events[0] == "tetsu.node.create.end" and events[-1] == "tetsu.node.delete.end"
