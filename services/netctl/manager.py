"""The network controller's RPC endpoint: wire a node's port into a tenant network, the
provisioning network or nothing, then record where it is wired (``Port.binding``).

The switch is programmed first and the database written after, so a port the database
calls bound is really bound. Each call states the wanted wiring whole, so a repeated call
(at-least-once delivery, a conductor's retry) programs the same thing again harmlessly.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import bindparam, update
from sqlmodel import select

from libs import rpc
from libs.db import Database, Network, Port, PortBinding
from libs.errors import NotFound

from .backends import SwitchBackend
from .settings import NetctlSettings

LOG = logging.getLogger(__name__)

# Calls on one port are serialised so the switch and the database end in the same state;
# a fixed set of locks picked by port id bounds memory however many ports there are.
LOCK_STRIPES = 64

_PORT = Port.metadata.tables["port"]
_NETWORK = Network.metadata.tables["network"]
#: Record a port's wiring and read the port back in one statement, built once; it is
#: committed only once the switch is programmed (through the ORM, a read, then an
#: UPDATE at commit, each call cost netctl half again as much CPU).
_WIRE = (
    update(_PORT)
    .where(_PORT.c.id == bindparam("b_id"))
    .values(binding=bindparam("b_binding"), network_id=bindparam("b_network"))
    .returning(*_PORT.c)
)
_SEGMENT = select(_NETWORK.c.segmentation_id).where(_NETWORK.c.id == bindparam("b_id"))


class NetworkManager:
    RPC_API_VERSION = "1.0"

    def __init__(self, settings: NetctlSettings, db: Database, backend: SwitchBackend) -> None:
        self.settings = settings
        self.db = db
        self.backend = backend
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    @rpc.expose
    def bind_port(self, ctxt: rpc.RequestContext, port_id: str, network_id: str) -> dict[str, Any]:
        """Wire the port into tenant network ``network_id``; only its traffic reaches it."""
        with self._wiring(port_id, PortBinding.TENANT, network_id) as (port, segment):
            assert segment is not None  # a network's
            self.backend.bind(port, segment)
            LOG.info("port %s: bound to network %s", port_id, network_id)
            return _public(port, segment)

    @rpc.expose
    def provision_port(self, ctxt: rpc.RequestContext, port_id: str) -> dict[str, Any]:
        """Wire the port into the provisioning network (the conductors' DHCP, TFTP, HTTP)."""
        segment = self.settings.provisioning_segmentation_id
        with self._wiring(port_id, PortBinding.PROVISIONING, None) as (port, _):
            self.backend.bind(port, segment)
            LOG.info("port %s: on the provisioning network", port_id)
            return _public(port, segment)

    @rpc.expose
    def unbind_port(self, ctxt: rpc.RequestContext, port_id: str) -> dict[str, Any]:
        """Isolate the port: no network at all."""
        with self._wiring(port_id, PortBinding.NONE, None) as (port, _):
            self.backend.unbind(port)
            LOG.info("port %s: unbound", port_id)
            return _public(port, None)

    @contextmanager
    def _wiring(
        self, port_id: str, binding: PortBinding, network_id: str | None
    ) -> Iterator[tuple[Port, int | None]]:
        """The port with its new wiring written but not committed, and the network's
        segment: committed when the block (which programs the switch) ends, undone if it
        raises. NotFound if there is no such port or network."""
        params = {"b_id": port_id, "b_binding": binding.value, "b_network": network_id}
        with self._lock_for(port_id), self.db.engine.begin() as connection:
            segment = None
            if network_id is not None:
                segment = connection.execute(_SEGMENT, {"b_id": network_id}).scalar()
                if segment is None:
                    raise NotFound(f"network {network_id} not found")
            row = connection.execute(_WIRE, params).first()
            if row is None:
                raise NotFound(f"port {port_id} not found")
            yield Port(**row._mapping), segment

    def recorded_wiring(self) -> list[tuple[Port, int]]:
        """Every port the database records as wired, with its segment: what the switches
        must carry when netctl starts (the backend's starting state)."""
        with self.db.session() as session:
            rows = session.exec(
                select(Port, Network)
                .outerjoin(Network, Port.network_id == Network.id)  # type: ignore[arg-type]
                .where(Port.binding != PortBinding.NONE)
            ).all()
        wiring = []
        for port, network in rows:
            if port.binding == PortBinding.PROVISIONING:
                wiring.append((port, self.settings.provisioning_segmentation_id))
            elif network is not None:
                wiring.append((port, network.segmentation_id))
        return wiring

    def _lock_for(self, port_id: str) -> threading.Lock:
        return self._locks[zlib.crc32(port_id.encode()) % LOCK_STRIPES]


def _public(port: Port, segmentation_id: int | None) -> dict[str, Any]:
    """What the callers get back: the port's wiring as it is now."""
    return {
        "id": port.id,
        "address": port.address,
        "binding": PortBinding(port.binding).value,
        "network_id": port.network_id,
        "segmentation_id": segmentation_id,
    }
