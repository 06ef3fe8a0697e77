"""VM nodes made on demand: when no enrolled node fits, an instance whose flavor is a
hypervisor's resource class gets a new VM node carved out of that hypervisor's capacity.

A hypervisor's free capacity is what its conductor reported less what its VM nodes hold
(every VM node on it, in any state, until its cleaning deletes it). The claim bumps the
hypervisor's ``generation`` first: that write makes claims on one hypervisor run one at
a time (a row lock on PostgreSQL, the write lock on SQLite), so the capacity read after
it is exact and two schedulers never hand out the same room twice.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Subquery, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from libs.db import (
    Conductor,
    Database,
    Hypervisor,
    Node,
    Port,
    PowerState,
    new_id,
    utcnow,
)
from libs.notify import Notifier, Phase
from services.conductor.rpcapi import alive
from services.conductor.states import ProvisionState

from .claims import ClaimOutcome, record_node
from .request import RequestSpec

LOG = logging.getLogger(__name__)

#: The smallest VM made, whatever the flavor asks (the libvirt driver's own minimum).
MIN_VM_CPUS = 1
MIN_VM_MEMORY_MB = 64
#: Attempts at a node whose generated MAC address happened to be taken already.
MAC_ATTEMPTS = 3


@dataclass(frozen=True)
class Room:
    """A hypervisor with room for an instance, and the room it has."""

    id: str
    name: str
    free_vcpus: int
    free_memory_mb: int
    free_disk_gb: int


def vm_size(spec: RequestSpec) -> tuple[int, int, int]:
    """The cpus, memory (MiB) and disk (GiB) of the VM node made for ``spec``."""
    return max(spec.cpus, MIN_VM_CPUS), max(spec.memory_mb, MIN_VM_MEMORY_MB), spec.disk_gb


def _used() -> Subquery:
    """Per hypervisor: the cpus, memory and disk its VM nodes hold."""
    return (
        select(
            col(Node.hypervisor_id).label("hypervisor_id"),
            func.sum(Node.cpus).label("cpus"),
            func.sum(Node.memory_mb).label("memory_mb"),
            func.sum(Node.disk_gb).label("disk_gb"),
        )
        .where(col(Node.hypervisor_id).is_not(None))
        .group_by(col(Node.hypervisor_id))
        .subquery()
    )


def hypervisors_with_room(
    session: Session, spec: RequestSpec, heartbeat_timeout: float
) -> list[Room]:
    """The hypervisors of the flavor's resource class whose conductor is alive and that
    have room for the instance's VM, the most free memory first (VMs spread out)."""
    cpus, memory_mb, disk_gb = vm_size(spec)
    used = _used()
    free_vcpus = col(Hypervisor.vcpus) - func.coalesce(used.c.cpus, 0)
    free_memory = col(Hypervisor.memory_mb) - func.coalesce(used.c.memory_mb, 0)
    free_disk = col(Hypervisor.disk_gb) - func.coalesce(used.c.disk_gb, 0)
    rows = session.execute(
        sa_select(col(Hypervisor.id), col(Hypervisor.name), free_vcpus, free_memory, free_disk)
        .outerjoin(used, used.c.hypervisor_id == col(Hypervisor.id))
        .join(Conductor, col(Conductor.hostname) == col(Hypervisor.conductor))
        .where(
            col(Hypervisor.resource_class) == spec.resource_class,
            *alive(heartbeat_timeout),
            free_vcpus >= cpus,
            free_memory >= memory_mb,
            free_disk >= disk_gb,
        )
        .order_by(free_memory.desc(), col(Hypervisor.name))
    ).all()
    return [Room(*row) for row in rows]


def hypervisor_reason(session: Session, spec: RequestSpec) -> str | None:
    """Why no hypervisor of the flavor's class took the instance, or None if there is none."""
    rows = session.exec(
        select(Hypervisor.name).where(col(Hypervisor.resource_class) == spec.resource_class)
    ).all()
    if not rows:
        return None
    cpus, memory_mb, disk_gb = vm_size(spec)
    return (
        f"no room for a VM of {cpus} vCPU(s), {memory_mb} MiB, {disk_gb} GiB on "
        f"{len(rows)} hypervisor(s) of that class with a live conductor"
    )


def _mac() -> str:
    """A random address in QEMU's 52:54:00 block."""
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))


def tap_name(node_id: str, index: int) -> str:
    """The VM's tap device on the bridge (at most 15 characters, Linux's limit)."""
    return f"tv{node_id.replace('-', '')[:10]}n{index}"


def claim_on_hypervisor(
    db: Database, spec: RequestSpec, hypervisor_id: str, notifier: Notifier
) -> tuple[ClaimOutcome, str | None]:
    """Make a VM node for the instance on the hypervisor, claimed for it, if the
    hypervisor still has room and the instance still waits. Returns the outcome and the
    node's id when CLAIMED (NODE_TAKEN: no room left)."""
    for _ in range(MAC_ATTEMPTS):
        try:
            return _claim_on_hypervisor(db, spec, hypervisor_id, notifier)
        except IntegrityError as exc:
            LOG.info("hypervisor %s: new VM node clashed (%s); again", hypervisor_id, exc.orig)
    return ClaimOutcome.NODE_TAKEN, None


def _claim_on_hypervisor(
    db: Database, spec: RequestSpec, hypervisor_id: str, notifier: Notifier
) -> tuple[ClaimOutcome, str | None]:
    cpus, memory_mb, disk_gb = vm_size(spec)
    now = utcnow()
    with db.session() as session:
        # The first statement writes: claims on this hypervisor queue behind it.
        bumped = session.exec(
            update(Hypervisor)
            .where(col(Hypervisor.id) == hypervisor_id)
            .values(generation=col(Hypervisor.generation) + 1)
        )
        if bumped.rowcount != 1:
            return ClaimOutcome.NODE_TAKEN, None
        hypervisor = session.get(Hypervisor, hypervisor_id)
        assert hypervisor is not None
        name = hypervisor.name
        held = session.exec(
            select(
                func.coalesce(func.sum(Node.cpus), 0),
                func.coalesce(func.sum(Node.memory_mb), 0),
                func.coalesce(func.sum(Node.disk_gb), 0),
            ).where(col(Node.hypervisor_id) == hypervisor_id)
        ).one()
        if (
            hypervisor.vcpus - held[0] < cpus
            or hypervisor.memory_mb - held[1] < memory_mb
            or hypervisor.disk_gb - held[2] < disk_gb
        ):
            return ClaimOutcome.NODE_TAKEN, None
        node_id = new_id()
        node = Node(
            id=node_id,
            name=f"{hypervisor.name}-{node_id[:8]}",
            resource_class=hypervisor.resource_class,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_gb=disk_gb,
            power_interface="libvirt",
            management_interface="libvirt",
            boot_interface="virtual",
            deploy_interface="image",
            driver_info={
                "libvirt_bridge": hypervisor.bridge,
                "libvirt_uri": hypervisor.libvirt_uri,
            },
            provision_state=ProvisionState.AVAILABLE.value,
            provision_updated_at=now,
            power_state=PowerState.OFF,
            instance_id=spec.instance_id,
            hypervisor_id=hypervisor_id,
            pinned_conductor=hypervisor.conductor,
            created_at=now,
            updated_at=now,
        )
        session.add(node)
        session.flush()  # the node before its ports (their foreign key)
        for index in range(max(spec.port_count, 1)):
            session.add(
                Port(
                    address=_mac(),
                    node_id=node_id,
                    switch_id=hypervisor.switch_id,
                    switch_port=tap_name(node_id, index),
                )
            )
        session.flush()
        instance = record_node(session, spec.instance_id, node_id, now)
        if instance is None:
            session.rollback()  # no node made: the room stays free
            return ClaimOutcome.INSTANCE_GONE, None
        notifier.node(session, node, "create", Phase.END, instance_id=spec.instance_id)
        notifier.instance(session, instance, "schedule", Phase.END)
    LOG.info("instance %s: VM node %s made on hypervisor %s", spec.instance_id, node_id, name)
    return ClaimOutcome.CLAIMED, node_id


def claim_vm(
    db: Database,
    spec: RequestSpec,
    heartbeat_timeout: float,
    notifier: Notifier,
    rooms: Sequence[Room] | None = None,
) -> tuple[ClaimOutcome, str | None]:
    """Try the hypervisors with room in turn; NODE_TAKEN (and None) when none had any."""
    if rooms is None:
        with db.session() as session:
            rooms = hypervisors_with_room(session, spec, heartbeat_timeout)
    for room in rooms:
        outcome, node_id = claim_on_hypervisor(db, spec, room.id, notifier)
        if outcome is not ClaimOutcome.NODE_TAKEN:
            return outcome, node_id
        LOG.debug("instance %s: hypervisor %s full meanwhile", spec.instance_id, room.name)
    return ClaimOutcome.NODE_TAKEN, None
