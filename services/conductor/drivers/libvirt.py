"""Virtual machines as nodes: power and management ``libvirt`` run a node as a libvirt/QEMU
domain, and deploy ``image`` writes the instance's raw image straight into the domain's
disk file, so the same image that bare metal gets through the ramdisk boots as a VM.

The domain is defined from the node at each power on (CPUs, memory, its disk, one NIC per
port: MAC, and the port's ``switch_port`` as the tap's name on the ``libvirt_bridge`` Open
vSwitch bridge), so netctl wires a VM's port exactly like a physical machine's cable.
``driver_info``: ``libvirt_uri`` (default ``qemu:///system``), ``libvirt_bridge``
(required). The disk and the serial console log live in the conductor's ``vm_root``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from libs.db import PowerState
from libs.errors import BadRequest

from .base import (
    BootDevice,
    BootInterface,
    DriverError,
    ManagementInterface,
    PowerInterface,
    check_driver_info,
)
from .ramdisk import RamdiskDeploy

if TYPE_CHECKING:
    from services.conductor.task_manager import Task

LOG = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
VIRSH_TIMEOUT = 60.0
COPY_CHUNK = 4 * 1024 * 1024
GiB = 1024**3
#: virsh's words for a domain that runs (anything else, or no domain, is off).
RUNNING_STATES = frozenset({"running", "paused", "in shutdown", "blocked", "pmsuspended"})


def domain_name(node_id: str) -> str:
    return f"tetsu-{node_id}"


class VirtualMachine:
    """Where a VM node's pieces are: its domain, disk and console log."""

    def __init__(self, task: Task, vm_root: Path) -> None:
        node = task.node
        info = node.driver_info or {}
        self.uri = str(info.get("libvirt_uri") or DEFAULT_URI)
        self.bridge = str(info.get("libvirt_bridge") or "")
        self.name = domain_name(node.id)
        self.disk = vm_root / f"{node.id}.img"
        self.console = vm_root / f"{node.id}.console.log"

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["virsh", "-q", "-c", self.uri, *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=VIRSH_TIMEOUT, check=False
            )
        except FileNotFoundError:
            raise DriverError("libvirt: virsh is not installed on this conductor") from None
        except subprocess.TimeoutExpired:
            raise DriverError(
                f"libvirt: {args[0]} {self.name} did not finish within {VIRSH_TIMEOUT:g} s"
            ) from None
        if check and result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise DriverError(f"libvirt: {args[0]} {self.name} failed: {' '.join(message)}")
        return result

    def state(self) -> str:
        """virsh's domain state, or "undefined"."""
        result = self.virsh("domstate", self.name, check=False)
        if result.returncode != 0:
            if "failed to get domain" in result.stderr or "not found" in result.stderr.lower():
                return "undefined"
            raise DriverError(f"libvirt: domstate {self.name} failed: {result.stderr.strip()}")
        return result.stdout.strip()


class LibvirtPower(PowerInterface):
    def validate(self, task: Task) -> None:
        check_driver_info(
            task,
            required=["libvirt_bridge"],
            strings=["libvirt_uri", "libvirt_bridge"],
            interface="libvirt power",
        )
        if task.node.cpus < 1 or task.node.memory_mb < 64:
            raise BadRequest("libvirt power: the node needs cpus >= 1 and memory_mb >= 64")
        missing = [port.address for port in task.ports if not port.switch_port]
        if missing:
            raise BadRequest(
                f"libvirt power: port(s) {', '.join(missing)} have no switch_port (the tap name)"
            )

    def get_power_state(self, task: Task) -> PowerState:
        state = self._vm(task).state()
        return PowerState.ON if state in RUNNING_STATES else PowerState.OFF

    def set_power_state(self, task: Task, state: PowerState) -> None:
        vm = self._vm(task)
        current = vm.state()
        if state == PowerState.OFF:
            if current in RUNNING_STATES:
                vm.virsh("destroy", vm.name)
            return
        if state != PowerState.ON:
            raise DriverError(f"libvirt: cannot set power state {state}")
        if current in RUNNING_STATES:
            return
        if not vm.disk.is_file():
            raise DriverError(f"libvirt: {vm.name} has no disk yet ({vm.disk})")
        self._define(task, vm)
        vm.virsh("start", vm.name)

    def reboot(self, task: Task) -> None:
        self.set_power_state(task, PowerState.OFF)
        self.set_power_state(task, PowerState.ON)

    def _vm(self, task: Task) -> VirtualMachine:
        return VirtualMachine(task, self.env.settings.vm_root)

    def _define(self, task: Task, vm: VirtualMachine) -> None:
        """(Re)define the domain from the node as it is now (its ports may have changed)."""
        xml = vm.disk.with_suffix(".xml")
        settings = self.env.settings
        xml.write_text(
            domain_xml(
                task, vm, domain_type=settings.vm_domain_type, csum_offload=settings.vm_csum_offload
            )
        )
        vm.virsh("define", str(xml))


def domain_xml(
    task: Task, vm: VirtualMachine, *, domain_type: str = "kvm", csum_offload: bool = True
) -> str:
    """The libvirt domain of a VM node: direct disk boot, serial console to a file."""
    node = task.node
    offload = "" if csum_offload else "<driver name='qemu'><host csum='off'/></driver>"
    nics = "".join(
        f"<interface type='bridge'><mac address={quoteattr(port.address)}/>"
        f"<source bridge={quoteattr(vm.bridge)}/><virtualport type='openvswitch'/>"
        f"<target dev={quoteattr(port.switch_port or '')}/><model type='virtio'/>{offload}"
        "</interface>"
        for port in sorted(task.ports, key=lambda port: port.address)
    )
    console = quoteattr(str(vm.console))
    return (
        f"<domain type={quoteattr(domain_type)}><name>{vm.name}</name>{_uuid(node.id)}"
        f"<memory unit='MiB'>{node.memory_mb}</memory><vcpu>{node.cpus}</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/>"
        "<bios useserial='yes'/></os><features><acpi/></features>"
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file={quoteattr(str(vm.disk))}/><target dev='vda' bus='virtio'/></disk>"
        f"{nics}"
        f"<serial type='file'><source path={console} append='on'/><target port='0'/></serial>"
        f"<console type='file'><source path={console} append='on'/>"
        "<target type='serial' port='0'/></console>"
        "</devices></domain>"
    )


def _uuid(node_id: str) -> str:
    """The domain's uuid: the node's id, so that defining the domain again (a rebuild,
    a later power on) updates it; libvirt refuses a second definition of the same name
    with a uuid of its own making."""
    try:
        return f"<uuid>{uuid.UUID(node_id)}</uuid>"
    except ValueError:
        return ""


class LibvirtManagement(ManagementInterface):
    """A VM boots its disk: there is no network boot to switch to."""

    def validate(self, task: Task) -> None:
        pass

    def set_boot_device(self, task: Task, device: BootDevice) -> None:
        if device != BootDevice.DISK:
            raise DriverError(f"libvirt: a VM boots from its disk, not {device}")

    def get_boot_device(self, task: Task) -> BootDevice:
        return BootDevice.DISK


class VirtualBoot(BootInterface):
    """No ramdisk to boot: deploy ``image`` writes the disk from the conductor."""

    def validate(self, task: Task) -> None:
        pass

    def prepare_ramdisk(self, task: Task) -> None:
        pass

    def clean_up_ramdisk(self, task: Task) -> None:
        pass


class ImageDeploy(RamdiskDeploy):
    """The conductor writes the image into the VM's disk file before it powers on (and
    checks its sha256 on the way); cleaning deletes the disk. Each reports through the same
    callback path a ramdisk takes, from a thread of its own."""

    needs_ramdisk = False

    def validate(self, task: Task) -> None:
        if task.node.power_interface != "libvirt":
            raise BadRequest(
                f"image deploy: needs power interface 'libvirt', "
                f"the node has {task.node.power_interface!r}"
            )

    def prepare(self, task: Task) -> None:
        image = self._deployable_image(task)
        self._publish(image)
        assert image.size is not None and image.sha256 is not None
        vm = VirtualMachine(task, self.env.settings.vm_root)
        size = max(image.size, task.node.disk_gb * GiB)
        write_disk(self.tree.image(image.id), vm.disk, image.size, image.sha256.lower(), size)
        LOG.info("node %s: image %s written to %s", task.node.id, image.id, vm.disk)

    def deploy(self, task: Task) -> None:
        self._report_soon(task, "deploy")

    def clean(self, task: Task) -> None:
        """The node is off: its domain and disk go (the next deploy defines both anew)."""
        vm = VirtualMachine(task, self.env.settings.vm_root)
        if vm.state() != "undefined":
            vm.virsh("undefine", vm.name)
        for path in (vm.disk, vm.disk.with_suffix(".xml")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._report_soon(task, "cleaning")

    def _report_soon(self, task: Task, work: str) -> None:
        token = self._token(task, work)
        node_id = task.node.id
        report = self.env.ramdisk_report
        # After this task's state change is saved: the report retries while it is locked.
        thread = threading.Thread(
            target=report, args=(node_id, token, True, None), name=f"vm-{work}-{node_id[:8]}"
        )
        thread.daemon = True
        thread.start()


def write_disk(source: Path, disk: Path, size: int, sha256: str, disk_size: int) -> None:
    """Copy the image ``source`` (``size`` bytes, ``sha256``) to ``disk`` grown to
    ``disk_size``; a copy whose checksum differs is removed and fails."""
    disk.parent.mkdir(parents=True, exist_ok=True)
    partial = disk.with_name(f".{disk.name}.part")
    digest = hashlib.sha256()
    copied = 0
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            while chunk := reader.read(COPY_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                copied += len(chunk)
            writer.truncate(max(disk_size, copied))
        if copied != size or digest.hexdigest() != sha256:
            raise DriverError(
                f"image copy to {disk.name}: checksum mismatch: expected {sha256} "
                f"({size} bytes), read {digest.hexdigest()} ({copied} bytes)"
            )
        os.replace(partial, disk)
    except OSError as exc:
        raise DriverError(f"writing the VM disk {disk} failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
