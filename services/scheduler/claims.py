"""The atomic claim of a node for an instance, and the ways an instance leaves scheduling.

Every change is a conditional UPDATE whose row count says whether it happened, so any
number of schedulers (threads or processes, on PostgreSQL or SQLite) can race for the
same node and exactly one wins: the database re-checks the condition on the row it
locks (PostgreSQL) or runs one writer at a time (SQLite).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, not_, update
from sqlmodel import Session, col, select

from libs.db import Database, Instance, InstanceStatus, Node, Port, TaskState, utcnow
from libs.notify import Notifier, Phase
from services.conductor.states import ProvisionState

#: Records the events of these changes when the caller names no notifier (tests).
_RECORD_ONLY = Notifier(service="scheduler")

#: The states of a node whose conductor has taken up the deploy of its instance.
DEPLOY_STARTED = (
    ProvisionState.DEPLOYING.value,
    ProvisionState.DEPLOYWAIT.value,
    ProvisionState.ACTIVE.value,
)


_NODE = Node.metadata.tables["node"]
_INSTANCE = Instance.metadata.tables["instance"]

# The claim's two statements, built once and run on the session's Core connection
# (through the ORM each cost more CPU to build and run than the database took).
#: The node becomes the instance's if it is still free.
_CLAIM = (
    update(_NODE)
    .where(
        _NODE.c.id == bindparam("b_node"),
        _NODE.c.instance_id.is_(None),
        _NODE.c.provision_state == ProvisionState.AVAILABLE.value,
        not_(_NODE.c.maintenance),
    )
    .values(instance_id=bindparam("b_instance"), updated_at=bindparam("b_now"))
    .returning(_NODE.c.pinned_conductor)
)
#: The instance ``b_instance`` is in BUILD without a node (not deleted, not scheduled
#: meanwhile).
_WAITS_FOR_A_NODE: tuple[ColumnElement[bool], ...] = (
    _INSTANCE.c.id == bindparam("b_instance"),
    _INSTANCE.c.status == InstanceStatus.BUILD.value,
    _INSTANCE.c.node_id.is_(None),
)
#: The instance gets the node if it still waits in BUILD for one; read back for its event.
_RECORD = (
    update(_INSTANCE)
    .where(*_WAITS_FOR_A_NODE)
    .values(
        node_id=bindparam("b_node"),
        task_state=TaskState.DEPLOYING.value,
        attempts=_INSTANCE.c.attempts + 1,
        updated_at=bindparam("b_now"),
    )
    .returning(*_INSTANCE.c)
)


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"  # the node is the instance's now
    NODE_TAKEN = "node taken"  # another instance got there first (or it left available)
    INSTANCE_GONE = "instance gone"  # not waiting for a node any more (deleted, scheduled)


def claim_node(
    db: Database,
    instance_id: str,
    node_id: str,
    notifier: Notifier = _RECORD_ONLY,
    *,
    pinned: Callable[[str, str | None], None] | None = None,
) -> ClaimOutcome:
    """Claim ``node_id`` for ``instance_id`` if the node is free and the instance still
    waits in BUILD; in the same transaction, record the node on the instance. A claimed
    node's pinned conductor (None: any) goes to ``pinned(node_id, host)``, read by the
    claim itself (the caller casts to the node's conductor next)."""
    now = utcnow()
    with db.session() as session:
        # The first statement of the transaction writes: on SQLite it then waits for the
        # write lock instead of failing on a read snapshot another writer made stale.
        node = session.connection().execute(
            _CLAIM, {"b_node": node_id, "b_instance": instance_id, "b_now": now}
        )
        claimed = node.first()
        if claimed is None:
            return ClaimOutcome.NODE_TAKEN
        instance = record_node(session, instance_id, node_id, now)
        if instance is None:
            session.rollback()  # releases the node: it was never claimed for anyone else
            return ClaimOutcome.INSTANCE_GONE
        notifier.instance(session, instance, "schedule", Phase.END)
    if pinned is not None:
        pinned(node_id, claimed[0])
    return ClaimOutcome.CLAIMED


def record_node(session: Session, instance_id: str, node_id: str, now: datetime) -> Instance | None:
    """Give the instance its node, if it still waits in BUILD for one (the caller rolls
    back its claim of the node otherwise): one more attempt, now deploying. Returns the
    instance as it is now (for its event, without reading it again), None if it no
    longer waits."""
    row = (
        session.connection()
        .execute(_RECORD, {"b_instance": instance_id, "b_node": node_id, "b_now": now})
        .first()
    )
    return None if row is None else Instance(**row._mapping)


def release_claim(
    db: Database,
    instance_id: str,
    node_id: str,
    fault: dict[str, Any],
    notifier: Notifier = _RECORD_ONLY,
) -> bool:
    """Undo a claim whose deploy could not be started: the node is free again and the
    instance, if it still waits on this node, goes to ERROR with ``fault``. A node whose
    deploy started got the cast after all (a publish can fail after the broker took it):
    its conductor carries on, so both are left alone.

    Returns whether the instance went to ERROR.
    """
    with db.session() as session:
        node = session.exec(
            update(Node)
            .where(
                col(Node.id) == node_id,
                col(Node.instance_id) == instance_id,
                col(Node.provision_state).not_in(DEPLOY_STARTED),
            )
            .values(instance_id=None, updated_at=utcnow())
        )
        if node.rowcount != 1:
            return False
        instance = session.exec(
            update(Instance)
            .where(
                col(Instance.id) == instance_id,
                col(Instance.status) == InstanceStatus.BUILD,
                col(Instance.node_id) == node_id,
            )
            .values(
                node_id=None,
                status=InstanceStatus.ERROR,
                task_state=None,
                fault=fault,
                updated_at=utcnow(),
            )
        )
        if instance.rowcount != 1:
            return False
        notifier.instance_by_id(session, instance_id, "create", Phase.ERROR)
        # A VM node made for this instance alone (nothing on it yet) goes away again.
        made_for_it = (
            col(Node.id) == node_id,
            col(Node.hypervisor_id).is_not(None),
            col(Node.instance_id).is_(None),
            col(Node.reservation).is_(None),
        )
        session.exec(
            delete(Port).where(
                col(Port.node_id) == node_id, select(col(Node.id)).where(*made_for_it).exists()
            )
        )
        session.exec(delete(Node).where(*made_for_it))
        return True


def fail_instance(
    db: Database, instance_id: str, fault: dict[str, Any], notifier: Notifier = _RECORD_ONLY
) -> bool:
    """Put an instance that waits for a node into ERROR with ``fault``.

    Returns whether it did (False: the instance was deleted or got a node meanwhile).
    """
    with db.session() as session:
        instance = session.exec(
            update(Instance)
            .where(*_WAITS_FOR_A_NODE)
            .values(status=InstanceStatus.ERROR, task_state=None, fault=fault, updated_at=utcnow()),
            params={"b_instance": instance_id},
        )
        if instance.rowcount != 1:
            return False
        notifier.instance_by_id(session, instance_id, "create", Phase.ERROR)
        return True
