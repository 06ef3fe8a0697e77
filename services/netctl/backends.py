"""Switch backends: how the network controller wires a node's port into a network segment.

The controller decides *which* segment a port belongs to; a backend makes the switch do
it. ``FakeSwitch`` keeps the wiring in memory for tests and all-in-one mode; the OpenFlow
backend plugs in here by name (``settings.backend``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

from libs.db import Port

from .settings import NetctlSettings


class SwitchPort(NamedTuple):
    """Where a NIC is cabled: the switch (datapath id) and its port."""

    switch_id: str
    port: str


class SwitchBackend(ABC):
    """Programs the switches. Both operations are idempotent: doing one twice is harmless."""

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
}


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
