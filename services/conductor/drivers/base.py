"""The hardware interfaces a conductor drives a node through: power, boot, deploy, management.

Each node names one implementation of each kind (``Node.power_interface`` ...). An
implementation keeps no per-node state of its own: what it must remember goes into the
node's ``driver_internal_info``. ``validate()`` only looks at the node's data (no I/O) and
raises :class:`~libs.errors.BadRequest` with the reason; a hardware operation that fails
raises :class:`DriverError`, whose reason the conductor puts in ``Node.last_error``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from libs.db import PowerState
from libs.errors import BadRequest, TetsuError

if TYPE_CHECKING:
    from libs.db import Database
    from services.conductor.settings import ConductorSettings
    from services.conductor.task_manager import Task


class DriverError(TetsuError):
    """A hardware operation failed (BMC unreachable, command refused, ramdisk not ready)."""

    status = 500
    code = "driver_error"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    DISK = "disk"


class InterfaceKind(enum.StrEnum):
    POWER = "power"
    BOOT = "boot"
    DEPLOY = "deploy"
    MANAGEMENT = "management"


#: How a ramdisk run started by :meth:`DeployInterface.deploy` or ``clean`` reports back in
#: one process: ``report(node_id, token, success, message)``. The real ramdisk reaches the
#: same conductor method through the API's callback endpoint instead.
RamdiskReport = Callable[[str, str, bool, str | None], None]


@dataclass(frozen=True)
class DriverEnv:
    """What an interface may use from the conductor that loads it."""

    settings: ConductorSettings
    ramdisk_report: RamdiskReport
    #: The conductor's database, for interfaces that read more than the node (the
    #: ramdisk deploy reads the instance's image). None in tests that need no rows.
    db: Database | None = None


class BaseInterface(abc.ABC):
    kind: InterfaceKind

    def __init__(self, env: DriverEnv) -> None:
        self.env = env

    @abc.abstractmethod
    def validate(self, task: Task) -> None:
        """Check the node's data for this interface (no I/O); raise BadRequest if unusable."""


class PowerInterface(BaseInterface):
    kind = InterfaceKind.POWER

    @abc.abstractmethod
    def get_power_state(self, task: Task) -> PowerState:
        """The node's power state as the hardware reports it now."""

    @abc.abstractmethod
    def set_power_state(self, task: Task, state: PowerState) -> None:
        """Power the node on or off (``PowerState.ON`` / ``PowerState.OFF``)."""

    @abc.abstractmethod
    def reboot(self, task: Task) -> None:
        """Power-cycle the node; it ends powered on."""


class BootInterface(BaseInterface):
    kind = InterfaceKind.BOOT

    @abc.abstractmethod
    def prepare_ramdisk(self, task: Task) -> None:
        """Make the deploy ramdisk what the node boots from the network next.

        ``task.callback_token`` holds the token the ramdisk must present when it reports.
        """

    @abc.abstractmethod
    def clean_up_ramdisk(self, task: Task) -> None:
        """Undo :meth:`prepare_ramdisk` (the node's network boot files)."""


class DeployInterface(BaseInterface):
    kind = InterfaceKind.DEPLOY
    #: Whether the node network-boots a ramdisk for deploys and cleaning (False: the
    #: interface does the work itself while the node is off, as for a VM's disk file).
    needs_ramdisk: bool = True

    def prepare(self, task: Task) -> None:
        """Get ready what the deploy needs before the node powers on (an image to serve):
        slow work done here does not keep a booted machine waiting."""

    @abc.abstractmethod
    def deploy(self, task: Task) -> None:
        """Start writing the instance's image; the ramdisk reports back when it is done."""

    @abc.abstractmethod
    def clean(self, task: Task) -> None:
        """Start wiping the node's disks; the ramdisk reports back when it is done."""


class ManagementInterface(BaseInterface):
    kind = InterfaceKind.MANAGEMENT

    @abc.abstractmethod
    def set_boot_device(self, task: Task, device: BootDevice) -> None:
        """Boot from ``device`` from the next power-on on."""

    @abc.abstractmethod
    def get_boot_device(self, task: Task) -> BootDevice:
        """The device the node boots from next."""


def check_driver_info(
    task: Task,
    *,
    required: Sequence[str] = (),
    strings: Sequence[str] = (),
    numbers: Sequence[str] = (),
    interface: str,
) -> dict[str, Any]:
    """Check ``driver_info``: ``required`` keys present, optional keys of the right type.

    Raises BadRequest naming the interface and the keys, never their values (a value may
    be a password).
    """
    info = task.node.driver_info or {}
    missing = [key for key in required if info.get(key) in (None, "")]
    if missing:
        raise BadRequest(f"{interface}: driver_info is missing {', '.join(sorted(missing))}")
    for key in strings:
        if key in info and not isinstance(info[key], str):
            raise BadRequest(f"{interface}: driver_info {key} must be a string")
    for key in numbers:
        value = info.get(key)
        if key in info and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise BadRequest(f"{interface}: driver_info {key} must be a number >= 0")
    return info
