"""The caller's side of the conductor: each method is a cast or call to the node's owner.

A node's owner is the live conductor the hash ring (over the conductors that heartbeat
in the database) maps the node's id to; every caller computes the same answer.

Versions: 1.0 - deploy_node, tear_down_node, ramdisk_callback, do_provisioning_action,
set_power_state, validate_node.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlmodel import col, select

from libs.db import Conductor, Database, Node, utcnow
from libs.errors import RPC_ERRORS, NoLiveConductor
from libs.rpc import RequestContext, RPCClient, Target, Transport

from .hashring import HashRing

TOPIC = "conductor"


def alive(heartbeat_timeout: float) -> tuple[ColumnElement[bool], ...]:
    """The conditions on ``conductor`` of one that is online and heartbeat within
    ``heartbeat_timeout`` seconds: what the hash ring counts as alive."""
    since = utcnow() - timedelta(seconds=heartbeat_timeout)
    return col(Conductor.online).is_(True), col(Conductor.updated_at) >= since


def live_conductors(db: Database, heartbeat_timeout: float) -> list[str]:
    """Hostnames of the conductors that heartbeat within ``heartbeat_timeout`` seconds."""
    with db.reader() as session:
        rows = session.exec(select(Conductor.hostname).where(*alive(heartbeat_timeout))).all()
    return sorted(rows)


def pinned_nodes(db: Database) -> dict[str, str]:
    """The nodes only one conductor may manage (VM nodes), and that conductor."""
    with db.reader() as session:
        rows = session.exec(
            select(Node.id, Node.pinned_conductor).where(col(Node.pinned_conductor).is_not(None))
        ).all()
    return {node_id: host for node_id, host in rows if host is not None}


def live_ring(db: Database, heartbeat_timeout: float) -> HashRing:
    """The ring over the live conductors, with every pinned node's conductor."""
    return HashRing(live_conductors(db, heartbeat_timeout), pins=pinned_nodes(db))


#: Seconds a ConductorAPI keeps the ring it read: a conductor's death is noticed after a
#: heartbeat timeout (60 s) anyway, so a second more does not matter.
RING_TTL = 1.0

#: Pins remembered per ConductorAPI: a node's pin never changes, so nothing goes stale.
PIN_CACHE_SIZE = 100_000


class ConductorAPI:
    #: 1.1: rebuild_node, evacuate_node.
    RPC_API_VERSION = "1.1"

    def __init__(
        self,
        transport: Transport,
        db: Database,
        *,
        heartbeat_timeout: float = 60.0,
        timeout: float = 60.0,
    ) -> None:
        self.db = db
        self.heartbeat_timeout = heartbeat_timeout
        self._pins: dict[str, str | None] = {}
        self._ring: tuple[float, HashRing] | None = None
        self._ring_lock = threading.Lock()
        self.client = RPCClient(
            transport,
            Target(TOPIC, version=self.RPC_API_VERSION),
            timeout=timeout,
            allowed_errors=RPC_ERRORS,
        )

    def ring(self) -> HashRing:
        """The ring over the live conductors, read at most once per ``RING_TTL`` seconds
        (a burst casts hundreds of times a second). An empty ring is never kept: a
        conductor that starts is seen at once."""
        now = time.monotonic()
        with self._ring_lock:
            cached = self._ring
            if cached is not None and now - cached[0] < RING_TTL:
                return cached[1]
        ring = HashRing(live_conductors(self.db, self.heartbeat_timeout))
        with self._ring_lock:
            self._ring = (now, ring) if ring.hosts else None
        return ring

    def ring_or_raise(self) -> HashRing:
        """The ring; NoLiveConductor if it is empty."""
        ring = self.ring()
        if not ring.hosts:
            raise NoLiveConductor("no conductor is running (none has sent a heartbeat recently)")
        return ring

    def owner_of(self, node_id: str) -> str:
        """The hostname of the conductor that owns ``node_id`` now: its pinned conductor
        (NoLiveConductor when that one is not running), else the ring's choice."""
        pinned = self._pin_of(node_id)
        if pinned is None:
            return self.ring_or_raise().owner(node_id)
        if pinned not in self.ring().hosts:
            raise NoLiveConductor(
                f"node {node_id} is managed by conductor {pinned} only, which is not running"
            )
        return pinned

    def _pin_of(self, node_id: str) -> str | None:
        if node_id in self._pins:
            return self._pins[node_id]
        with self.db.reader() as session:
            row = session.exec(
                select(Node.id, Node.pinned_conductor).where(col(Node.id) == node_id)
            ).first()
        if row is None:
            return None  # not remembered: the node may be made later (and then pinned)
        self.remember_pin(node_id, row[1])
        return row[1]

    def remember_pin(self, node_id: str, pinned: str | None) -> None:
        """Keep what the caller read of a node's pinned conductor (None: not pinned), so
        the next cast for it needs no query (the scheduler reads it with its claim)."""
        if len(self._pins) >= PIN_CACHE_SIZE:
            self._pins.clear()
        self._pins[node_id] = pinned

    def _to_owner(self, node_id: str, version: str = "1.0") -> RPCClient:
        return self.client.prepare(server=self.owner_of(node_id), version=version)

    def deploy_node(self, ctxt: RequestContext, node_id: str, instance_id: str) -> None:
        """Deploy ``instance_id``'s image on the (claimed) node; ends in ACTIVE or a reschedule."""
        self._to_owner(node_id).cast(ctxt, "deploy_node", node_id=node_id, instance_id=instance_id)

    def tear_down_node(self, ctxt: RequestContext, node_id: str) -> None:
        """Delete the node's instance: power off, clean, and make the node available again."""
        self._to_owner(node_id).cast(ctxt, "tear_down_node", node_id=node_id)

    def evacuate_node(self, ctxt: RequestContext, node_id: str, instance_id: str) -> None:
        """Fence the (dead) node and provision its instance on another node."""
        self._to_owner(node_id, version="1.1").cast(
            ctxt, "evacuate_node", node_id=node_id, instance_id=instance_id
        )

    def rebuild_node(self, ctxt: RequestContext, node_id: str, instance_id: str) -> None:
        """Write the instance's (new) image again on its node; ends ACTIVE, or ERROR."""
        self._to_owner(node_id, version="1.1").cast(
            ctxt, "rebuild_node", node_id=node_id, instance_id=instance_id
        )

    def ramdisk_callback(
        self, ctxt: RequestContext, node_id: str, success: bool, message: str | None = None
    ) -> None:
        """The deploy ramdisk finished its step (the API has checked the node's token)."""
        self._to_owner(node_id).call(
            ctxt, "ramdisk_callback", node_id=node_id, success=success, message=message
        )

    def do_provisioning_action(self, ctxt: RequestContext, node_id: str, action: str) -> None:
        """An operator's action on a node: manage, provide or delete (see states.Event)."""
        self._to_owner(node_id).call(ctxt, "do_provisioning_action", node_id=node_id, action=action)

    def set_power_state(self, ctxt: RequestContext, node_id: str, state: str) -> None:
        """Power a node on, off or reboot it ("power on", "power off", "reboot")."""
        self._to_owner(node_id).call(ctxt, "set_power_state", node_id=node_id, state=state)

    def validate_node(self, ctxt: RequestContext, node_id: str) -> dict[str, Any]:
        """Each interface's ``validate()``: {"power": {"result": true, "reason": null}, ...}."""
        result: dict[str, Any] = self._to_owner(node_id).call(
            ctxt, "validate_node", node_id=node_id
        )
        return result
