"""Hardware interfaces by name: a registry of implementations per kind, and the factory that
gives a conductor the ones its settings enable (``enabled_power_interfaces`` ...).

A new implementation registers itself here (``register(InterfaceKind.POWER, "ipmi",
IPMIPower)``); a node picks it by name and the conductor loads it only when enabled.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal, overload

from libs.errors import BadRequest

from .base import (
    BaseInterface,
    BootDevice,
    BootInterface,
    DeployInterface,
    DriverEnv,
    DriverError,
    InterfaceKind,
    ManagementInterface,
    PowerInterface,
    RamdiskReport,
)
from .fake import FakeBoot, FakeDeploy, FakeManagement, FakePower
from .ipmi import IPMIManagement, IPMIPower
from .libvirt import ImageDeploy, LibvirtManagement, LibvirtPower, VirtualBoot
from .pxe import PXEBoot
from .ramdisk import RamdiskDeploy

if TYPE_CHECKING:
    from services.conductor.settings import ConductorSettings

__all__ = [
    "BaseInterface",
    "BootDevice",
    "BootInterface",
    "DeployInterface",
    "DriverEnv",
    "DriverError",
    "DriverFactory",
    "InterfaceKind",
    "ManagementInterface",
    "PowerInterface",
    "RamdiskReport",
    "get_class",
    "register",
    "registered",
]

_BASES: dict[InterfaceKind, type[object]] = {
    InterfaceKind.POWER: PowerInterface,
    InterfaceKind.BOOT: BootInterface,
    InterfaceKind.DEPLOY: DeployInterface,
    InterfaceKind.MANAGEMENT: ManagementInterface,
}

_registry: dict[InterfaceKind, dict[str, type[BaseInterface]]] = {kind: {} for kind in _BASES}


def register(kind: InterfaceKind, name: str, cls: type[BaseInterface]) -> None:
    """Make ``cls`` available as the ``kind`` interface called ``name``."""
    if not issubclass(cls, _BASES[kind]):
        raise TypeError(f"{cls.__name__} is not a {_BASES[kind].__name__}")
    known = _registry[kind].get(name)
    if known is not None and known is not cls:
        raise ValueError(f"{kind} interface {name!r} is already {known.__name__}")
    _registry[kind][name] = cls


def registered(kind: InterfaceKind) -> list[str]:
    """The names of the ``kind`` implementations this code base has."""
    return sorted(_registry[kind])


def get_class(kind: InterfaceKind, name: str) -> type[BaseInterface]:
    """The class registered as ``name``; BadRequest if there is none."""
    try:
        return _registry[kind][name]
    except KeyError:
        known = ", ".join(registered(kind)) or "none"
        raise BadRequest(f"unknown {kind} interface {name!r} (registered: {known})") from None


register(InterfaceKind.POWER, "fake", FakePower)
register(InterfaceKind.BOOT, "fake", FakeBoot)
register(InterfaceKind.DEPLOY, "fake", FakeDeploy)
register(InterfaceKind.MANAGEMENT, "fake", FakeManagement)
register(InterfaceKind.BOOT, "pxe", PXEBoot)
register(InterfaceKind.DEPLOY, "ramdisk", RamdiskDeploy)
register(InterfaceKind.POWER, "ipmi", IPMIPower)
register(InterfaceKind.MANAGEMENT, "ipmi", IPMIManagement)
register(InterfaceKind.POWER, "libvirt", LibvirtPower)
register(InterfaceKind.MANAGEMENT, "libvirt", LibvirtManagement)
register(InterfaceKind.BOOT, "virtual", VirtualBoot)
register(InterfaceKind.DEPLOY, "image", ImageDeploy)


class DriverFactory:
    """The interfaces one conductor may use: the enabled ones, each loaded once and shared
    by every node that names it (they keep per-node state on the node)."""

    def __init__(self, settings: ConductorSettings, env: DriverEnv) -> None:
        self.env = env
        self.enabled: dict[InterfaceKind, tuple[str, ...]] = {
            InterfaceKind.POWER: tuple(settings.enabled_power_interfaces),
            InterfaceKind.BOOT: tuple(settings.enabled_boot_interfaces),
            InterfaceKind.DEPLOY: tuple(settings.enabled_deploy_interfaces),
            InterfaceKind.MANAGEMENT: tuple(settings.enabled_management_interfaces),
        }
        for kind, names in self.enabled.items():
            unknown = [name for name in names if name not in _registry[kind]]
            if unknown:  # a typo in the settings fails at start, not node by node
                raise ValueError(
                    f"enabled_{kind}_interfaces names unknown {kind} interface(s) "
                    f"{', '.join(unknown)} (registered: {', '.join(registered(kind))})"
                )
        self._loaded: dict[tuple[InterfaceKind, str], BaseInterface] = {}
        self._lock = threading.Lock()

    @overload
    def get(self, kind: Literal[InterfaceKind.POWER], name: str) -> PowerInterface: ...
    @overload
    def get(self, kind: Literal[InterfaceKind.BOOT], name: str) -> BootInterface: ...
    @overload
    def get(self, kind: Literal[InterfaceKind.DEPLOY], name: str) -> DeployInterface: ...
    @overload
    def get(self, kind: Literal[InterfaceKind.MANAGEMENT], name: str) -> ManagementInterface: ...
    @overload
    def get(self, kind: InterfaceKind, name: str) -> BaseInterface: ...

    def get(self, kind: InterfaceKind, name: str) -> BaseInterface:
        """The ``kind`` interface called ``name``; BadRequest unless it is enabled."""
        if name not in self.enabled[kind]:
            enabled = ", ".join(self.enabled[kind]) or "none"
            raise BadRequest(f"unknown {kind} interface {name!r} (enabled: {enabled})")
        with self._lock:
            interface = self._loaded.get((kind, name))
            if interface is None:
                interface = get_class(kind, name)(self.env)
                self._loaded[(kind, name)] = interface
        return interface
