"""Which conductor owns which node: a consistent hash ring over the live conductors.

When a conductor joins or leaves, only about 1/N of the nodes change owner. Every service
builds the same ring from the same list of hostnames, so they agree without talking.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping

REPLICAS = 64  # points per conductor on the ring: evens out the share each one gets


def _point(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


class HashRing:
    """The ring over ``hosts``; ``pins`` maps the ids of nodes that only one conductor
    can manage (a VM node: its hypervisor's) to that conductor, whatever the ring says."""

    def __init__(
        self,
        hosts: Iterable[str],
        replicas: int = REPLICAS,
        pins: Mapping[str, str] | None = None,
    ) -> None:
        self.hosts = frozenset(hosts)
        self.pins: Mapping[str, str] = dict(pins or {})
        ring = sorted((_point(f"{host}#{i}"), host) for host in self.hosts for i in range(replicas))
        self._points = [point for point, _ in ring]
        self._owners = [host for _, host in ring]

    def owner(self, key: str) -> str:
        """The host that owns ``key``: its pin if it has one (live or not), else the
        ring's choice. Raises LookupError when the ring is empty."""
        pinned = self.pins.get(key)
        if pinned is not None:
            return pinned
        if not self._points:
            raise LookupError("no live conductor")
        index = bisect.bisect(self._points, _point(key)) % len(self._points)
        return self._owners[index]

    def __len__(self) -> int:
        return len(self.hosts)
