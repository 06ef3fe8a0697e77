"""VM nodes: power and management ``libvirt``, boot ``virtual``, deploy ``image``. A stand-in
``virsh`` on PATH keeps each domain's state in a folder and logs every command, so a whole
deploy and cleaning runs through the conductor without libvirt (the lab runs real VMs:
tests/lab/test_tenant_isolation.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select, update

from libs.db import Instance, InstanceStatus, Port, PortBinding, TaskState
from libs.errors import BadRequest
from services.conductor.drivers import BootDevice, DriverError
from services.conductor.drivers.libvirt import write_disk
from tests.unit.conductor.conftest import Cloud, wait_for
from tests.unit.conductor.test_pxe_ramdisk_drivers import claimed_instance, make_image

FAKE_VIRSH = r"""#!/bin/sh
# virsh -q -c URI COMMAND ARG: domain states as files in $FAKE_VIRSH_DIR
echo "$*" >> "$FAKE_VIRSH_DIR/log"
shift 3
command=$1 arg=$2
case "$command" in
domstate)
    [ -f "$FAKE_VIRSH_DIR/$arg" ] || { echo "error: failed to get domain '$arg'" >&2; exit 1; }
    cat "$FAKE_VIRSH_DIR/$arg" ;;
define)
    name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$arg")
    uuid=$(sed -n 's:.*<uuid>\(.*\)</uuid>.*:\1:p' "$arg")
    if [ -f "$FAKE_VIRSH_DIR/$name.xml" ]; then
        # as libvirt: a new definition of a known name must carry the same uuid
        old=$(sed -n 's:.*<uuid>\(.*\)</uuid>.*:\1:p' "$FAKE_VIRSH_DIR/$name.xml")
        if [ -z "$uuid" ] || [ "$uuid" != "$old" ]; then
            echo "error: domain '$name' already exists with uuid $old" >&2; exit 1
        fi
    fi
    cp "$arg" "$FAKE_VIRSH_DIR/$name.xml"
    [ -f "$FAKE_VIRSH_DIR/$name" ] || echo "shut off" > "$FAKE_VIRSH_DIR/$name" ;;
start) echo running > "$FAKE_VIRSH_DIR/$arg" ;;
destroy) echo "shut off" > "$FAKE_VIRSH_DIR/$arg" ;;
undefine) rm -f "$FAKE_VIRSH_DIR/$arg" "$FAKE_VIRSH_DIR/$arg.xml" ;;
esac
"""


@pytest.fixture
def virsh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in virsh's folder (domain states, ``log`` of the commands)."""
    folder = tmp_path / "virsh"
    folder.mkdir()
    (folder / "log").touch()
    tool = tmp_path / "bin" / "virsh"
    tool.parent.mkdir()
    tool.write_text(FAKE_VIRSH)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VIRSH_DIR", str(folder))
    return folder


def vm_settings(tmp_path: Path) -> dict[str, Any]:
    return {
        "enabled_power_interfaces": ["fake", "libvirt"],
        "enabled_management_interfaces": ["fake", "libvirt"],
        "enabled_boot_interfaces": ["fake", "virtual"],
        "enabled_deploy_interfaces": ["fake", "image"],
        "boot_root": tmp_path / "boot",
        "vm_root": tmp_path / "vms",
        "vm_csum_offload": False,
        "vm_domain_type": "qemu",
    }


def vm_node(cloud: Cloud, **driver_info: Any) -> str:
    node_id = cloud.make_node(
        ports=1,
        power_interface="libvirt",
        management_interface="libvirt",
        boot_interface="virtual",
        deploy_interface="image",
        cpus=2,
        memory_mb=512,
        disk_gb=1,
        driver_info={"libvirt_bridge": "br-vm", **driver_info},
    )
    with cloud.db.session() as session:
        for port in session.exec(select(Port).where(col(Port.node_id) == node_id)):
            port.switch_port = f"tv-{node_id[:8]}"
            session.add(port)
    return node_id


def test_a_vm_is_deployed_from_its_disk_without_a_ramdisk_then_cleaned_away(
    cloud: Cloud, virsh: Path, tmp_path: Path
) -> None:
    cloud.start_conductor(**vm_settings(tmp_path))
    data = b"raw image" * 1000
    uploaded = tmp_path / "upload"
    uploaded.write_bytes(data)
    node_id = vm_node(cloud)
    instance_id = claimed_instance(cloud, node_id, make_image(cloud, data, file_path=str(uploaded)))
    domain = f"tetsu-{node_id}"

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    node = cloud.settled(node_id, "active")
    assert node.power_state == "power on"
    disk = tmp_path / "vms" / f"{node_id}.img"
    assert disk.read_bytes()[: len(data)] == data
    assert disk.stat().st_size == 1024**3  # grown to the flavor's disk (sparse)
    assert (virsh / domain).read_text().strip() == "running"
    xml = (virsh / f"{domain}.xml").read_text()
    port = cloud.ports(node_id)[0]
    assert '<domain type="qemu">' in xml
    assert f"<uuid>{node_id}</uuid>" in xml  # so that it can be defined again
    assert f'<mac address="{port.address}"/>' in xml
    assert f'<target dev="tv-{node_id[:8]}"/>' in xml
    assert '<source bridge="br-vm"/>' in xml
    assert "<host csum='off'/>" in xml
    assert "<memory unit='MiB'>512</memory><vcpu>2</vcpu>" in xml
    # Started once, by the final reboot (the port in its tenant network by then): no
    # network boot of a ramdisk before it.
    commands = [line.split()[3] for line in (virsh / "log").read_text().splitlines()]
    assert commands.count("start") == 1
    assert cloud.ports(node_id)[0].binding == PortBinding.TENANT

    cloud.delete_instance(instance_id)

    cloud.settled(node_id, "available", timeout=10)
    assert not disk.exists()
    assert not (virsh / domain).exists(), "the domain is undefined"
    assert cloud.instance(instance_id).status == InstanceStatus.DELETED


def test_a_vm_rebuilt_in_place_gets_the_image_again_and_restarts(
    cloud: Cloud, virsh: Path, tmp_path: Path
) -> None:
    cloud.start_conductor(**vm_settings(tmp_path))
    uploaded = tmp_path / "upload"
    uploaded.write_bytes(b"first image")
    node_id = vm_node(cloud)
    instance_id = claimed_instance(
        cloud, node_id, make_image(cloud, b"first image", file_path=str(uploaded))
    )
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.settled(node_id, "active")
    newer = tmp_path / "newer"
    newer.write_bytes(b"second image")
    image = make_image(cloud, b"second image", file_path=str(newer))
    with cloud.db.session() as session:
        session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id)
            .values(
                image_id=image.id, status=InstanceStatus.REBUILD, task_state=TaskState.REBUILDING
            )
        )

    cloud.api.rebuild_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    assert cloud.settled(node_id, "active").instance_id == instance_id
    disk = tmp_path / "vms" / f"{node_id}.img"
    assert disk.read_bytes()[:12] == b"second image"
    assert (virsh / f"tetsu-{node_id}").read_text().strip() == "running"
    commands = [line.split()[3] for line in (virsh / "log").read_text().splitlines()]
    assert (commands.count("define"), commands.count("start")) == (2, 2)


def test_an_image_that_is_not_its_checksum_fails_the_vm_deploy(
    cloud: Cloud, virsh: Path, tmp_path: Path
) -> None:
    cloud.start_conductor(**vm_settings(tmp_path))
    uploaded = tmp_path / "upload"
    uploaded.write_bytes(b"the real bytes")
    image = make_image(cloud, b"other bytes!!!", file_path=str(uploaded))
    node_id = vm_node(cloud)
    claimed_instance(cloud, node_id, image)

    cloud.api.deploy_node(cloud.ctxt, node_id, cloud.node(node_id).instance_id or "")

    node = cloud.settled(node_id, "deploy failed")
    assert "checksum mismatch" in (node.last_error or "")
    assert not (tmp_path / "vms" / f"{node_id}.img").exists()
    assert "start" not in (virsh / "log").read_text()


def test_write_disk_grows_the_copy_and_refuses_a_wrong_checksum(tmp_path: Path) -> None:
    source = tmp_path / "image"
    source.write_bytes(b"x" * 5000)
    sha = hashlib.sha256(b"x" * 5000).hexdigest()
    disk = tmp_path / "vm" / "disk.img"
    write_disk(source, disk, 5000, sha, 1 << 20)
    assert disk.stat().st_size == 1 << 20
    with pytest.raises(DriverError, match="checksum mismatch"):
        write_disk(source, tmp_path / "vm" / "other.img", 5000, "0" * 64, 1 << 20)
    assert sorted(p.name for p in (tmp_path / "vm").iterdir()) == ["disk.img"]


def test_vm_nodes_are_validated_without_touching_libvirt(
    cloud: Cloud, virsh: Path, tmp_path: Path
) -> None:
    service = cloud.start_conductor(**vm_settings(tmp_path))
    no_bridge = vm_node(cloud, libvirt_bridge="")
    with service.manager.tasks.acquire(cloud.ctxt, no_bridge, "test") as task:
        with pytest.raises(BadRequest, match="libvirt_bridge"):
            task.driver.power.validate(task)
        with pytest.raises(DriverError, match="boots from its disk"):
            task.driver.management.set_boot_device(task, BootDevice.PXE)
        assert task.driver.deploy.needs_ramdisk is False
    assert (virsh / "log").read_text() == ""
