"""Switch backends: how the network controller wires a node's port into a network segment.

The controller decides *which* segment a port belongs to; a backend makes the switch do
it. ``FakeSwitch`` keeps the wiring in memory for tests and all-in-one mode;
``OpenFlowSwitch`` (``services/netctl/openflow/``) programs Open vSwitch. ``settings.backend``
names the one a netctl uses (:data:`BACKENDS`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import NamedTuple

from libs.db import Port

from .settings import NetctlSettings


class SwitchPort(NamedTuple):
    """Where a NIC is cabled: the switch (datapath id) and its port."""

    switch_id: str
    port: str


class SwitchBackend(ABC):
    """Programs the switches. Both operations are idempotent: doing one twice is harmless."""

    def start(self, wiring: Iterable[tuple[Port, int]] = ()) -> None:  # noqa: B027
        """Start with ``wiring``, each port's segment as the database records it (ports
        bound to nothing are not in it), before any call."""

    def stop(self) -> None:  # noqa: B027
        """Let go of the switches; what they were programmed with stays."""

    @abstractmethod
    def bind(self, port: Port, segmentation_id: int) -> None:
        """Wire ``port`` into segment ``segmentation_id``: it reaches that segment only."""

    @abstractmethod
    def unbind(self, port: Port) -> None:
        """Isolate ``port``: no traffic in or out."""


class FakeSwitch(SwitchBackend):
    """A switch in memory: remembers which segment each switch port is wired to.

    A port with no recorded cabling is keyed by its MAC (switch id ``"fake"``), so tests
    and demos need not invent switch ports.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._segments: dict[SwitchPort, int] = {}

    def start(self, wiring: Iterable[tuple[Port, int]] = ()) -> None:
        with self._lock:
            for port, segment in wiring:
                self._segments[self.switch_port_of(port)] = segment

    @staticmethod
    def switch_port_of(port: Port) -> SwitchPort:
        if port.switch_id and port.switch_port:
            return SwitchPort(port.switch_id, port.switch_port)
        return SwitchPort("fake", port.address)

    def bind(self, port: Port, segmentation_id: int) -> None:
        with self._lock:
            self._segments[self.switch_port_of(port)] = segmentation_id

    def unbind(self, port: Port) -> None:
        with self._lock:
            self._segments.pop(self.switch_port_of(port), None)

    def segment_of(self, port: Port) -> int | None:
        """The segment ``port`` is wired to now, or None when it is isolated."""
        with self._lock:
            return self._segments.get(self.switch_port_of(port))

    def wiring(self) -> dict[SwitchPort, int]:
        """A copy of every wired switch port and its segment."""
        with self._lock:
            return dict(self._segments)


class UnknownBackend(ValueError):
    """``settings.backend`` names no switch backend."""


#: Backends by the name ``settings.backend`` uses, each made from the settings (where a
#: real backend finds its switches).
BACKENDS: dict[str, Callable[[NetctlSettings], SwitchBackend]] = {
    "fake": lambda _settings: FakeSwitch(),
    "openflow": lambda settings: _openflow_switch(settings),  # noqa: PLW0108 (defined below)
}


def _openflow_switch(settings: NetctlSettings) -> SwitchBackend:
    # Imported here: only a netctl that programs real switches loads os-ken.
    from .openflow.switch import OpenFlowSwitch  # noqa: PLC0415

    return OpenFlowSwitch(settings)


def make_backend(settings: NetctlSettings) -> SwitchBackend:
    """A new backend of the kind ``settings.backend`` names (a key of :data:`BACKENDS`)."""
    try:
        factory = BACKENDS[settings.backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise UnknownBackend(
            f"unknown switch backend {settings.backend!r} (known: {known})"
        ) from None
    return factory(settings)
